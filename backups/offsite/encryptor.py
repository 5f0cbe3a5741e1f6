"""`python encryptor.py age1… [age1…]`: encrypts stdin to stdout with age (pyrage) for those recipients.

upload.py runs this in a child process for files staged before upload: pyrage holds the GIL for the
whole of an encryption (measured here: a thread beside it gets ~40 % of the interpreter), which stalls
the upload threads for seconds per GiB; a process of its own encrypts on another core and leaves the
uploader's interpreter free. Imports nothing of the project, so it starts from its path alone.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import pyrage
    from pyrage import x25519

    try:
        recipients = [x25519.Recipient.from_str(value) for value in argv[1:]]
    except (pyrage.RecipientError, ValueError):
        print("a recipient is not an age public key", file=sys.stderr)
        return 2
    if not recipients:
        print("no recipient given", file=sys.stderr)
        return 2
    try:
        pyrage.encrypt_io(sys.stdin.buffer, sys.stdout.buffer, recipients)
        sys.stdout.buffer.flush()
    except (pyrage.EncryptError, OSError) as error:
        print(f"age encryption failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
