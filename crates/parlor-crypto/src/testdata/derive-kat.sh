#!/usr/bin/env bash
# Derives the envelope's known-answer values with the openssl CLI, which shares
# no code with the Rust implementation under test (crates/parlor-crypto/src/envelope.rs).
#
#   derive-kat.sh          prints the deterministic values the tests expect
#   derive-kat.sh --fresh  also rewrites the randomised fixtures in this folder:
#                          a PSS signature and two OAEP key wraps under the
#                          committed test key kat-rsa-2048.der (made once with
#                          `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`
#                          and stored as PKCS#8 DER with `openssl pkcs8 -topk8 -nocrypt`)
#
# Inputs (the same constants as the tests): issued key K = 00 01 .. 1f,
# IV = a0 a1 .. af, a room message from "alice" in "vault" at epoch 3,
# counter 1, plaintext "hello from alice".
set -euo pipefail
cd "$(dirname "$0")"

hex() { od -An -v -tx1 | tr -d ' \n'; }
unhex() { sed 's/../\\x&/g' | xargs -0 printf '%b'; }
hkdf() {
    openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt "hexkey:$1" \
        -kdfopt "info:$2" HKDF | tr -d ':\n' | tr 'A-F' 'a-f'
}

key=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
iv=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
plaintext='hello from alice'
# version 01, kind 01 (room), "vault", "alice", epoch 3, counter 1
header=$(printf '\x01\x01\x05vault\x05alice' | hex)00000003$(printf '%016x' 1)

enc_key=$(hkdf "$key" 'parlor v1 aes-256-cbc')
mac_key=$(hkdf "$key" 'parlor v1 hmac-sha256')
ciphertext=$(printf '%s' "$plaintext" | openssl enc -aes-256-cbc -K "$enc_key" -iv "$iv" | hex)
ciphertext_len=$(printf '%04x' $((${#ciphertext} / 2)))
authenticated=$header$iv$ciphertext_len$ciphertext
mac=$(echo -n "$authenticated" | unhex | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$mac_key" -binary | hex)
digest=$(echo -n "$iv$ciphertext" | unhex | openssl dgst -sha256 -binary | hex)
signed=$(printf 'parlor v1 signature' | hex)$header$digest

echo "enc_key        $enc_key"
echo "mac_key        $mac_key"
echo "header         $header"
echo "ciphertext     $ciphertext"
echo "mac            $mac"
echo "sealed, unsigned (header .. mac):"
echo "               $authenticated$mac"
echo "signed message $signed"

if [[ ${1:-} == --fresh ]]; then
    private=$(mktemp)
    public=$(mktemp)
    trap 'rm -f "$private" "$public"' EXIT
    openssl pkey -inform DER -in kat-rsa-2048.der -out "$private"
    openssl pkey -in "$private" -pubout -out "$public"
    echo -n "$signed" | unhex | openssl dgst -sha256 -sigopt rsa_padding_mode:pss \
        -sigopt rsa_pss_saltlen:32 -sigopt rsa_mgf1_md:sha256 -sign "$private" -out kat-signature.bin
    for kind in room dm; do
        label=$(printf 'parlor %s key' "$kind" | hex)
        echo -n "$key" | unhex | openssl pkeyutl -encrypt -pubin -inkey "$public" \
            -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 \
            -pkeyopt rsa_mgf1_md:sha256 -pkeyopt "rsa_oaep_label:$label" \
            -out "kat-$kind-key-wrap.bin"
    done
    echo "rewrote kat-signature.bin, kat-room-key-wrap.bin and kat-dm-key-wrap.bin"
fi
