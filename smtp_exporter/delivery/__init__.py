"""End-to-end delivery (a module's `delivery`): after the SMTP part, find the probe message
in a mailbox over IMAP (check.py), with an IMAP client of its own (client.py over imap.py) and
what the message's headers say (headers.py)."""
