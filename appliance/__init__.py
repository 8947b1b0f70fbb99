"""EST (RFC 7030) certificate appliance for infusion-pump EAP-TLS certificates."""

__version__ = "0.1.0"
