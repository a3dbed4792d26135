//! Shared plumbing for the encoders in `backend` and `frontend`: appending
//! a tagged message with a length word that is always right.

/// Appends one tagged message whose body is written by `body`, then patches
/// the length word, so no encoder can get its length wrong.
pub(crate) fn message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    patch_len(out, len_at);
}

/// Writes the length of everything from `len_at` to the end into the four
/// bytes at `len_at`. Our own messages are tiny compared with 4 GiB, and
/// saturating keeps this total without a panic path.
pub(crate) fn patch_len(out: &mut [u8], len_at: usize) {
    let len = u32::try_from(out.len().saturating_sub(len_at)).unwrap_or(u32::MAX);
    if let Some(slot) = out.get_mut(len_at..len_at.saturating_add(4)) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

/// Writes a C string. Text pgmux echoes (user or database names, upstream
/// messages) could in theory carry a NUL, which would desynchronise the
/// peer's parser, so anything from the first NUL on is dropped.
pub(crate) fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    out.extend_from_slice(s.get(..end).unwrap_or_default());
    out.push(0);
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}
