//! The optional Prometheus endpoint (`metrics_listen`): `GET /metrics` answers with the whole process family's
//! numbers in text exposition format 0.0.4.
//!
//! HTTP is client input, and the supervisor never parses client bytes, so the endpoint is served by the listeners:
//! the supervisor binds the socket at start-up with the other listen sockets (a bad address stops start-up), every
//! listener inherits it and accepts on it (`server`), and a valid request makes the listener ask the supervisor for
//! a fresh snapshot through the admin console's machinery, which gathers every worker's report. `http` judges the
//! request and builds the response, `render` turns the snapshot into the exposition; both are sans IO.

pub mod http;
pub mod render;
pub mod server;
