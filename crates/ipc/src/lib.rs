//! Inter-process plumbing for pgmux: the session record and its versioned encoding (`record`), the messages
//! processes exchange (`message`), and the `SOCK_SEQPACKET` channel that carries a message and its file descriptors
//! in one `sendmsg` (`channel`); for the admin console, worker reports (`stats`), console commands and replies
//! (`admin`), and the strict field encoding and chunking they share (`wire`).

pub mod admin;
pub mod channel;
pub mod message;
pub mod record;
pub mod stats;
pub mod wire;

pub use channel::{Channel, IpcError, Outbox};
pub use message::Msg;
pub use record::{PreparedStatement, SessionRecord};
