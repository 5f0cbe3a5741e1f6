"""Notifications: what to say (`messages`), how to send it (`transports`), when to try again
(`backoff`), and how channel URLs are shown without their secrets (`masking`). All pure of Django
except the e-mail transport, which sends through a Django mail connection it is given."""
