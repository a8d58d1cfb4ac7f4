#!/usr/bin/env bash
# Derives the file transfer's known-answer values (crates/parlor-crypto/src/file.rs) with the
# openssl CLI, which shares no code with the Rust implementation under test.
#
#   derive-file-kat.sh          prints the deterministic values the tests expect
#   derive-file-kat.sh --fresh  also rewrites kat-file-signature.bin: a PSS
#                               signature over the signed offer under the
#                               committed test key kat-rsa-2048.der
#
# Inputs (the same constants as the tests): issued key K = 00 01 .. 1f, file
# nonce = b0 b1 .. bf, chunk IV = a0 a1 .. af. The file is 16 x "A", then
# "hello file chunk", then "tail" (36 bytes), offered by "alice" in room
# "vault" as "notes.txt" in chunks of 16 bytes (3 chunks), encrypted under
# room key epoch 3. The sealed chunk is chunk 1, "hello file chunk".
set -euo pipefail
cd "$(dirname "$0")"

hex() { od -An -v -tx1 | tr -d ' \n'; }
unhex() { sed 's/../\\x&/g' | xargs -0 printf '%b'; }
hkdf() {
    openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt "hexkey:$1" \
        -kdfopt "hexsalt:$2" -kdfopt "info:$3" HKDF | tr -d ':\n' | tr 'A-F' 'a-f'
}

key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
nonce=b0b1b2b3b4b5b6b7b8b9babbbcbdbebf
iv=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
file='AAAAAAAAAAAAAAAAhello file chunktail'
chunk='hello file chunk'

enc_key=$(hkdf "$key" "$nonce" 'parlor v1 file aes-256-cbc')
mac_key=$(hkdf "$key" "$nonce" 'parlor v1 file hmac-sha256')
ciphertext=$(printf '%s' "$chunk" | openssl enc -aes-256-cbc -K "$enc_key" -iv "$iv" | hex)
# u32 index 1, u32 chunk_count 3
mac=$(echo -n "0000000100000003$iv$ciphertext" | unhex |
    openssl dgst -sha256 -mac HMAC -macopt "hexkey:$mac_key" -binary | hex)
digest=$(printf '%s' "$file" | openssl dgst -sha256 -binary | hex)
# kind 1 (room), "vault", "alice", "notes.txt", size 36, chunk size 16,
# 3 chunks, flags 1, key id 3, nonce, digest
signed=$(printf 'parlor v1 file\x01\x05vault\x05alice\x09notes.txt' | hex)
signed=$signed$(printf '%016x%08x%08x%02x%08x' 36 16 3 1 3)$nonce$digest

echo "enc_key        $enc_key"
echo "mac_key        $mac_key"
echo "sealed chunk 1 (iv || ciphertext || mac):"
echo "               $iv$ciphertext$mac"
echo "digest         $digest"
echo "signed offer   $signed"

if [[ ${1:-} == --fresh ]]; then
    private=$(mktemp)
    trap 'rm -f "$private"' EXIT
    openssl pkey -inform DER -in kat-rsa-2048.der -out "$private"
    echo -n "$signed" | unhex | openssl dgst -sha256 -sigopt rsa_padding_mode:pss \
        -sigopt rsa_pss_saltlen:32 -sigopt rsa_mgf1_md:sha256 -sign "$private" \
        -out kat-file-signature.bin
    echo "rewrote kat-file-signature.bin"
fi
