#!/usr/bin/env bash
# Derives the envelope's and the identity's known-answer values with the
# openssl CLI, which shares no code with the Rust implementation under test
# (crates/parlor-crypto/src/{envelope,identity}.rs).
#
#   derive-kat.sh          prints the values the tests expect; Ed25519 is
#                          deterministic, so its signatures are among them
#   derive-kat.sh --fresh  also rewrites the randomised fixtures in this folder:
#                          two OAEP key wraps under the committed test key
#                          kat-rsa-2048.der (made once with
#                          `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`
#                          and stored as PKCS#8 DER with `openssl pkcs8 -topk8 -nocrypt`)
#
# The test identity is kat-ed25519.der (`openssl genpkey -algorithm ed25519
# -outform DER`) with kat-rsa-2048.der.
#
# Inputs (the same constants as the tests): issued key K = 00 01 .. 1f,
# IV = a0 a1 .. af, a room message from "alice" in "vault" at epoch 3,
# counter 1, plaintext "hello from alice". The room key wrap is for vault,
# incarnation 01 23 45 67 89 ab cd ef, epoch 3, to the test identity; the DM
# key wrap is key id 7, to the test identity, shared with the fingerprint
# ee ee .. ee.
set -euo pipefail
cd "$(dirname "$0")"

hex() { od -An -v -tx1 | tr -d ' \n'; }
unhex() { sed 's/../\\x&/g' | xargs -0 printf '%b'; }
hkdf() {
    openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt "hexkey:$1" \
        -kdfopt "info:$2" HKDF | tr -d ':\n' | tr 'A-F' 'a-f'
}
ed25519_sign() { # hex message -> hex signature
    local message
    message=$(mktemp)
    echo -n "$1" | unhex >"$message"
    openssl pkeyutl -sign -rawin -inkey kat-ed25519.der -keyform DER -in "$message" | hex
    rm -f "$message"
}

key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
iv=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
plaintext='hello from alice'
# version 02, kind 01 (room), "vault", "alice", epoch 3, counter 1
header=$(printf '\x02\x01\x05vault\x05alice' | hex)00000003$(printf '%016x' 1)

enc_key=$(hkdf "$key" 'parlor v2 aes-256-ctr')
mac_key=$(hkdf "$key" 'parlor v2 hmac-sha256')
ciphertext=$(printf '%s' "$plaintext" | openssl enc -aes-256-ctr -K "$enc_key" -iv "$iv" | hex)
ciphertext_len=$(printf '%04x' $((${#ciphertext} / 2)))
authenticated=$header$iv$ciphertext_len$ciphertext
# HMAC-SHA256 cut to its first 16 bytes (32 hex digits)
mac=$(echo -n "$authenticated" | unhex | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$mac_key" -binary | hex | head -c 32)
digest=$(echo -n "$iv$ciphertext" | unhex | openssl dgst -sha256 -binary | hex)
signed=$(printf 'parlor v2 signature' | hex)$header$digest
signature=$(ed25519_sign "$signed")

# The identity: the raw Ed25519 public key is the last 32 bytes of its DER
# SubjectPublicKeyInfo; the fingerprint is its SHA-256.
signing_key=$(openssl pkey -inform DER -in kat-ed25519.der -pubout -outform DER | hex | tail -c 64)
fingerprint=$(echo -n "$signing_key" | unhex | openssl dgst -sha256 -binary | hex)
rsa_der=$(openssl pkey -inform DER -in kat-rsa-2048.der -pubout -outform DER | hex)
binding=$(printf 'parlor v2 key binding' | hex)$(printf '%04x' $((${#rsa_der} / 2)))$rsa_der
name=$(printf 'parlor v2 name\x05alice' | hex)

echo "enc_key        $enc_key"
echo "mac_key        $mac_key"
echo "header         $header"
echo "ciphertext     $ciphertext"
echo "mac            $mac"
echo "sealed, unsigned (header .. mac):"
echo "               $authenticated$mac"
echo "signed message $signed"
echo "signature      $signature"
echo "signing key    $signing_key"
echo "fingerprint    $fingerprint"
echo "key binding    $(ed25519_sign "$binding")"
echo "name proof     $(ed25519_sign "$name") (alice)"

if [[ ${1:-} == --fresh ]]; then
    public=$(mktemp)
    trap 'rm -f "$public"' EXIT
    openssl pkey -inform DER -in kat-rsa-2048.der -pubout -out "$public"
    room_label=$(printf 'parlor v2 room key\x05vault' | hex)0123456789abcdef00000003$fingerprint
    dm_label=$(printf 'parlor v2 dm key' | hex)00000007$fingerprint$(printf 'ee%.0s' {1..32})
    for kind in room dm; do
        label_name=${kind}_label
        echo -n "$key" | unhex | openssl pkeyutl -encrypt -pubin -inkey "$public" \
            -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 \
            -pkeyopt rsa_mgf1_md:sha256 -pkeyopt "rsa_oaep_label:${!label_name}" \
            -out "kat-$kind-key-wrap.bin"
    done
    echo "rewrote kat-room-key-wrap.bin and kat-dm-key-wrap.bin"
fi
