//! Inter-process plumbing for pgmux: the session record and its versioned encoding (`record`), the messages
//! processes exchange (`message`), and the `SOCK_SEQPACKET` channel that carries a message and its file descriptors
//! in one `sendmsg` (`channel`).

pub mod channel;
pub mod message;
pub mod record;

pub use channel::{Channel, IpcError, Outbox};
pub use message::Msg;
pub use record::{PreparedStatement, SessionRecord};
