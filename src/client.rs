//! The client library for applications. Being written for issue 5.
