//! TEMPORARY: the v2 wire statements as the spec words them, until
//! parlor-proto's `secure` module has them; removed on the merge.
#![allow(missing_docs, dead_code)]

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use parlor_proto::secure::KEY_BITS;

pub type Fingerprint = [u8; 32];
pub const SIGNATURE_LEN: usize = 64;

pub fn fingerprint(signing_key: &[u8; 32]) -> Fingerprint {
    Sha256::digest(signing_key).into()
}

fn short(out: &mut Vec<u8>, field: &[u8]) {
    out.push(field.len() as u8);
    out.extend_from_slice(field);
}

pub fn key_binding_statement(rsa_der: &[u8]) -> Vec<u8> {
    let mut out = b"parlor v2 key binding".to_vec();
    out.extend_from_slice(&(rsa_der.len() as u16).to_be_bytes());
    out.extend_from_slice(rsa_der);
    out
}

pub fn name_proof_statement(name: &[u8]) -> Vec<u8> {
    let mut out = b"parlor v2 name".to_vec();
    short(&mut out, name);
    out
}

pub fn possession_statement(channel_binding: &[u8; 32], nick: &[u8]) -> Vec<u8> {
    let mut out = b"parlor v2 register".to_vec();
    out.extend_from_slice(channel_binding);
    short(&mut out, nick);
    out
}

pub fn resume_statement(id: u32, token: &[u8; 16], channel_binding: &[u8; 32]) -> Vec<u8> {
    let mut out = b"parlor v2 resume".to_vec();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(token);
    out.extend_from_slice(channel_binding);
    out
}

pub fn room_key_label(
    room: &[u8],
    incarnation: u64,
    epoch: u32,
    recipient: &Fingerprint,
) -> Vec<u8> {
    let mut out = b"parlor v2 room key".to_vec();
    short(&mut out, room);
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(recipient);
    out
}

pub fn dm_key_label(key_id: u32, recipient: &Fingerprint, other: &Fingerprint) -> Vec<u8> {
    let mut out = b"parlor v2 dm key".to_vec();
    out.extend_from_slice(&key_id.to_be_bytes());
    out.extend_from_slice(recipient);
    out.extend_from_slice(other);
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub signing_key: [u8; 32],
    pub rsa_der: Bytes,
    pub key_binding: [u8; 64],
    pub name_proof: [u8; 64],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub name: Bytes,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_count: u32,
    pub flags: u8,
    pub key_id: u32,
    pub nonce: [u8; 16],
    pub manifest: Bytes,
    pub counter: u64,
    pub signature: [u8; 64],
}
