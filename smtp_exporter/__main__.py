import sys

from smtp_exporter.cli import main

sys.exit(main())
