"""Real peers on loopback for the test suite; see each module's docstring.

- `aiosmtpd_server`: in-process aiosmtpd servers (plain, STARTTLS, SMTPS, AUTH, fault injection)
- `tls`: a trustme CA plus expired / not-yet-valid / wrong-host / self-signed certificates
- `smtp_sink`: Postfix's smtp-sink as a subprocess, with its fault options
- `scripted`: a scripted, misbehaving SMTP server (garbage, silence, trickle, resets...)
- `dns_server`: an authoritative DNS server (UDP + TCP) serving a zone from a dict

All of them listen on 127.0.0.1 (or ::1) port 0 and report the port the kernel chose.
"""
