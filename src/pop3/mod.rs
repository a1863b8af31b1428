//! POP3 client (RFC 1939, 2449, 2595, 5034): a sans-IO codec and a blocking session over TCP or TLS.
