#!/usr/bin/env bash
# Derives the file transfer's known-answer values (crates/parlor-crypto/src/file.rs) with the
# openssl CLI, which shares no code with the Rust implementation under test.
#
#   derive-file-kat.sh    prints the values the tests expect; the offer's
#                         Ed25519 signature (deterministic) by the test
#                         identity kat-ed25519.der is among them
#
# Inputs (the same constants as the tests): issued key K = 00 01 .. 1f, file
# nonce = b0 b1 .. bf, chunk IV = a0 a1 .. af, manifest IV = c0 c1 .. cf.
# The file is 16 x "A", then "hello file chunk", then "tail" (36 bytes),
# offered by "alice" in room "vault" as "notes.txt" in chunks of 16 bytes
# (3 chunks), encrypted under room key epoch 3, with counter 2. The sealed
# chunk is chunk 1, "hello file chunk".
set -euo pipefail
cd "$(dirname "$0")"

hex() { od -An -v -tx1 | tr -d ' \n'; }
unhex() { sed 's/../\\x&/g' | xargs -0 printf '%b'; }
hkdf() {
    openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt "hexkey:$1" \
        -kdfopt "hexsalt:$2" -kdfopt "info:$3" HKDF | tr -d ':\n' | tr 'A-F' 'a-f'
}
hmac() { # hex key, hex data -> hex mac
    echo -n "$2" | unhex | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$1" -binary | hex
}

key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
nonce=b0b1b2b3b4b5b6b7b8b9babbbcbdbebf
iv=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
manifest_iv=c0c1c2c3c4c5c6c7c8c9cacbcccdcecf
file='AAAAAAAAAAAAAAAAhello file chunktail'
chunk='hello file chunk'

enc_key=$(hkdf "$key" "$nonce" 'parlor v2 file aes-256-cbc')
mac_key=$(hkdf "$key" "$nonce" 'parlor v2 file hmac-sha256')
manifest_enc=$(hkdf "$key" "$nonce" 'parlor v2 file manifest aes-256-cbc')
manifest_mac=$(hkdf "$key" "$nonce" 'parlor v2 file manifest hmac-sha256')
ciphertext=$(printf '%s' "$chunk" | openssl enc -aes-256-cbc -K "$enc_key" -iv "$iv" | hex)
# u32 index 1, u32 chunk_count 3
mac=$(hmac "$mac_key" "0000000100000003$iv$ciphertext")
digest=$(printf '%s' "$file" | openssl dgst -sha256 -binary | hex)
# The manifest: digest || u64 size, sealed under the manifest keys.
manifest_ct=$(echo -n "$digest$(printf '%016x' 36)" | unhex |
    openssl enc -aes-256-cbc -K "$manifest_enc" -iv "$manifest_iv" | hex)
manifest=$manifest_iv$manifest_ct$(hmac "$manifest_mac" "$manifest_iv$manifest_ct")
# kind 1 (room), "vault", "alice", "notes.txt", size 36, chunk size 16,
# 3 chunks, flags 1, key id 3, nonce, long manifest, counter 2
signed=$(printf 'parlor v2 file\x01\x05vault\x05alice\x09notes.txt' | hex)
signed=$signed$(printf '%016x%08x%08x%02x%08x' 36 16 3 1 3)$nonce
signed=$signed$(printf '%04x' $((${#manifest} / 2)))$manifest$(printf '%016x' 2)
message=$(mktemp)
trap 'rm -f "$message"' EXIT
echo -n "$signed" | unhex >"$message"
signature=$(openssl pkeyutl -sign -rawin -inkey kat-ed25519.der -keyform DER -in "$message" | hex)

echo "enc_key        $enc_key"
echo "mac_key        $mac_key"
echo "manifest keys  $manifest_enc $manifest_mac"
echo "sealed chunk 1 (iv || ciphertext || mac):"
echo "               $iv$ciphertext$mac"
echo "digest         $digest"
echo "manifest       $manifest"
echo "signed offer   $signed"
echo "signature      $signature"
