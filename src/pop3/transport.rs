//! Connections: plain TCP, implicit TLS, or STLS upgrade, with rustls and the ring provider.
