//! pgmux-proto: the sans-IO PostgreSQL wire protocol used by pgmux.
//!
//! Nothing here touches a socket. Every function works on byte slices:
//! framing decides whether a whole message is buffered (`frame`, `startup`),
//! decoders read message bodies without ever panicking on peer data
//! (`backend`, `frontend`, built on `cursor`), encoders append messages to a
//! `Vec<u8>`, and `auth` holds the MD5 and SCRAM-SHA-256 mathematics.

pub mod auth;
pub mod backend;
pub mod cursor;
mod encode;
pub mod frame;
pub mod frontend;
pub mod sql;
pub mod startup;

#[cfg(test)]
pub(crate) mod testutil;
