//! One test per transition of the session table.
