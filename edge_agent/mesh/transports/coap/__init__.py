"""CoAP (RFC 7252) with OSCORE (RFC 8613) keyed by Hearth's own EDHOC handshakes: the brokerless transport."""
