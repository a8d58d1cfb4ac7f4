//! Every text a server sends after `9a 01` / `9a 02`, in one place: the
//! hub says them, and the clients recognise them.
//!
//! The fixed ones are constants; PROTOCOL.md §6 lists them all, and
//! `tests/doc_sync.rs` keeps the two in step. A text that names something (a
//! room, a user) is given as its parts, which the encoder joins straight into
//! the frame, so nothing is allocated to say it.

/// NICK for a name someone else holds.
pub const NICK_TAKEN: &str = "This nick has been nicked by someone else.";
/// NICK with an empty name.
pub const NICK_EMPTY: &str = "Nick must not be empty.";
/// NICK with a space or control byte in it.
pub const NICK_INVALID: &str = "Nick must not contain spaces or control characters.";
/// JOIN with an empty room name.
pub const ROOM_EMPTY: &str = "Room name must not be empty.";
/// JOIN with a space or control byte in the room name.
pub const ROOM_INVALID: &str = "Room name must not contain spaces or control characters.";
/// JOIN with a password that is not the room's.
pub const WRONG_PASSWORD: &str = "Invalid password. I'm afraid I can't let you do that.";
/// A room message while in no room.
pub const VOID: &str = "You shout into the void and hear nothing.";
/// A DM to a name nobody holds.
pub const NICK_NOT_PRESENT: &str = "Nick not present";
/// A connection past `max_connections`; then the server closes it.
pub const SERVER_FULL: &str = "Server full, try again later.";
/// A connection past `max_connections_per_ip`; then the server closes it.
pub const TOO_MANY_FROM_ADDRESS: &str = "Too many connections from your address, try again later.";
/// In cluster mode, the cluster's shared store or another node did not
/// answer: a new connection gets no name and is closed, a NICK leaves the
/// old name in place, a JOIN the old room, a DM is not delivered.
pub const CLUSTER_UNAVAILABLE: &str = "The chat network is unavailable, try again later.";
/// A JOIN that would create a room past `max_rooms`.
pub const TOO_MANY_ROOMS: &str = "The server has too many rooms, try again later.";
/// A password JOIN while the hashing queue is full.
pub const PASSWORDS_BUSY: &str = "Server busy checking passwords, try again later.";
/// A password JOIN whose hash failed (a bug).
pub const PASSWORD_FAILED: &str = "Internal error while checking the password.";
/// A request while the connection's previous one waits for a job.
pub const REQUEST_PENDING: &str = "Previous request still in progress.";
/// REGISTER_KEY whose keys are unusable: a signing key that is no valid
/// Ed25519 point (or one of small order), or an RSA key that is not an
/// rsaEncryption SubjectPublicKeyInfo of 2048 to 4096 bits with exponent
/// 65537 and nothing after it.
pub const BAD_PUBLIC_KEY: &str = "Keys must be an Ed25519 key and an RSA SubjectPublicKeyInfo (DER) of 2048 to 4096 bits with exponent 65537.";
/// REGISTER_KEY whose key binding, name proof or possession proof does not
/// verify, or SIGNED_NICK whose name proof does not: the client does not
/// hold the signing key, or signed another name or another connection.
pub const KEY_PROOF_FAILED: &str =
    "Key proof failed: sign with your own key, over your current name and this connection.";
/// A legacy NICK (`0f`) from a connection with a key: peers could not check
/// the new name, so the rename must come with a proof.
pub const SIGNED_NICK_NEEDED: &str =
    "A connection with a key renames with SIGNED_NICK (96), which proves the new name.";
/// FILE_RESUME whose proof is not by the original recipient's key, over
/// this transfer, token and connection.
pub const RESUME_PROOF_FAILED: &str =
    "Resume proof failed: only the recipient's own key can resume its file.";
/// A second REGISTER_KEY on one connection.
pub const KEY_ALREADY_REGISTERED: &str = "A key is already registered on this connection.";
/// DM_KEY_REQUEST from a connection without a key.
pub const REGISTER_KEY_FIRST: &str = "Register a key (81) first.";
/// DM_KEY_REQUEST naming yourself.
pub const DM_KEY_WITH_YOURSELF: &str = "You cannot open an encrypted DM with yourself.";
/// DM_KEY_REQUEST while the key-wrapping queue is full.
pub const KEYS_BUSY: &str = "Server busy issuing keys, try again later.";
/// DM_KEY_REQUEST whose wrap failed (a bug).
pub const KEY_WRAP_FAILED: &str = "Internal error while issuing keys.";
/// REGISTER_KEY on a plain connection of a server that has no TLS port;
/// see [`secure_needs_tls`].
pub const SECURE_NEEDS_TLS_NO_PORT: &str = "Secure connections need TLS, and this server has none.";
/// FILE_OFFER naming yourself.
pub const FILE_TO_YOURSELF: &str = "You cannot send a file to yourself.";
/// FILE_OFFER to a secure room without the encrypted flag.
pub const FILE_NOT_SEALED: &str =
    "Files in an end-to-end encrypted room must be sealed with the room key.";

/// JOIN for the room one is already in.
pub fn already_in_room(room: &[u8]) -> [&[u8]; 3] {
    [b"You are already in room '", room, b"'."]
}

/// A room message to a room other than one's own.
pub fn not_in_room(room: &[u8]) -> [&[u8]; 3] {
    [b"You are not in room '", room, b"'."]
}

/// JOIN of a full room.
pub fn room_is_full(room: &[u8]) -> [&[u8]; 3] {
    [b"Room '", room, b"' is full, try again later."]
}

/// JOIN of a secure room from a legacy connection.
pub fn room_is_secure(room: &[u8]) -> [&[u8]; 3] {
    [
        b"Room '",
        room,
        b"' is end-to-end encrypted; your client cannot join it.",
    ]
}

/// DM_KEY_REQUEST naming a legacy connection.
pub fn has_no_key(user: &[u8]) -> [&[u8]; 3] {
    [
        b"User '",
        user,
        b"' has no key; messages to them are not encrypted.",
    ]
}

/// DM_KEY_REQUEST naming a user for whom `dm_keys_per_target` keys were
/// issued within its window: nobody can make a user unwrap keys without end.
pub fn dm_keys_for_target(user: &[u8]) -> [&[u8]; 3] {
    [
        b"Too many DM keys were issued for '",
        user,
        b"' lately, try again later.",
    ]
}

/// FILE_OFFER to a legacy connection.
pub fn cannot_receive_files(user: &[u8]) -> [&[u8]; 3] {
    [
        b"User '",
        user,
        b"' cannot receive files: their client does not support them.",
    ]
}

/// REGISTER_KEY on a plain connection, where the server does not allow the
/// secure extension (`allow_secure_on_plain` is off): names the server's
/// TLS port, or says it has none. A key proof made on a plain connection
/// binds to no TLS session, so whoever relays the connection could replay it.
///
/// ```
/// use parlor_proto::text::{secure_needs_tls, SECURE_NEEDS_TLS_NO_PORT};
/// assert_eq!(
///     secure_needs_tls(Some(4171)),
///     "Secure connections need TLS: connect to port 4171."
/// );
/// assert_eq!(secure_needs_tls(None), SECURE_NEEDS_TLS_NO_PORT);
/// ```
pub fn secure_needs_tls(tls_port: Option<u16>) -> String {
    match tls_port {
        Some(port) => format!("Secure connections need TLS: connect to port {port}."),
        None => SECURE_NEEDS_TLS_NO_PORT.to_owned(),
    }
}

/// A frame or message that breaks the protocol; the server then closes the
/// connection.
pub fn malformed(reason: impl std::fmt::Display) -> String {
    format!("Malformed frame: {reason}.")
}

/// A request over a rate limit: at most `limit` of `what` per `window`.
pub fn slow_down(limit: usize, what: &str, window: std::time::Duration) -> String {
    let secs = window.as_secs_f64();
    format!("Slow down: at most {limit} {what} per {secs} seconds.")
}
