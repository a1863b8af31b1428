//! A blocking POP3 session over one connection, typed by protocol state.
