//! HPACK's Huffman coding of string literals (RFC 7541 §5.2, Appendix B).
//!
//! Decoding reads four bits at a time through a state machine compiled
//! from the code at build time: a state is a node of the code's tree, and
//! every code is at least five bits long, so a nibble completes at most one
//! symbol. Sixteen table lookups a byte pair, no bit loop.

use crate::huffman_code::CODES;

const EOS: u16 = 256;
/// A tree edge to a leaf: the symbol is in the low bits.
const LEAF: u16 = 0x8000;
const NO_CHILD: u16 = 0xffff;

/// One step of the decoder: where a nibble leads from a state.
#[derive(Clone, Copy)]
struct Step {
    next: u8,
    symbol: u8,
    flags: u8,
}

const EMITS: u8 = 1;
/// The nibble runs into the end-of-string symbol, which must not appear.
const FAILS: u8 = 2;

/// The code's tree: 256 inner nodes (node 0 is the root) with two edges each.
const fn tree() -> [[u16; 2]; 256] {
    let mut nodes = [[NO_CHILD; 2]; 256];
    let mut allocated = 1;
    let mut symbol = 0;
    while symbol < CODES.len() {
        let (code, len) = CODES[symbol];
        let mut node = 0;
        let mut bit = len as u32;
        while bit > 1 {
            bit -= 1;
            let b = ((code >> bit) & 1) as usize;
            if nodes[node][b] == NO_CHILD {
                nodes[node][b] = allocated as u16;
                allocated += 1;
            }
            node = nodes[node][b] as usize;
        }
        nodes[node][(code & 1) as usize] = LEAF | symbol as u16;
        symbol += 1;
    }
    nodes
}

const TREE: [[u16; 2]; 256] = tree();

const fn steps() -> [[Step; 16]; 256] {
    let mut table = [[Step { next: 0, symbol: 0, flags: 0 }; 16]; 256];
    let mut state = 0;
    while state < 256 {
        let mut nibble = 0;
        while nibble < 16 {
            let mut node = state;
            let mut step = Step { next: 0, symbol: 0, flags: 0 };
            let mut bit = 4;
            while bit > 0 {
                bit -= 1;
                let edge = TREE[node][(nibble >> bit) & 1];
                if edge & LEAF != 0 {
                    let symbol = edge & !LEAF;
                    if symbol == EOS {
                        step.flags = FAILS;
                    } else {
                        step.flags |= EMITS;
                        step.symbol = symbol as u8;
                    }
                    node = 0;
                } else {
                    node = edge as usize;
                }
            }
            step.next = node as u8;
            table[state][nibble] = step;
            nibble += 1;
        }
        state += 1;
    }
    table
}

static STEPS: [[Step; 16]; 256] = steps();

/// Whether input may end in each state: at the root, or after padding of
/// at most seven bits that are the start of the end-of-string code (all ones).
const fn accepting() -> [bool; 256] {
    let mut accept = [false; 256];
    accept[0] = true;
    let mut node = 0;
    let mut depth = 0;
    while depth < 7 {
        let edge = TREE[node][1];
        if edge & LEAF != 0 {
            break;
        }
        node = edge as usize;
        accept[node] = true;
        depth += 1;
    }
    accept
}

static ACCEPTING: [bool; 256] = accepting();

/// Why a Huffman-coded string does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// The end-of-string symbol appears in the string (RFC 7541 §5.2).
    EndOfString,
    /// The padding is longer than seven bits or not the end-of-string code's first bits.
    Padding,
}

/// Decodes `input` and appends the bytes to `out`.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    // A code is at least five bits: the output is at most 8/5 of the input.
    out.reserve(input.len() * 8 / 5 + 1);
    let mut state = 0usize;
    for &byte in input {
        for nibble in [byte >> 4, byte & 0x0f] {
            let step = STEPS[state][nibble as usize];
            if step.flags & FAILS != 0 {
                return Err(HuffmanError::EndOfString);
            }
            if step.flags & EMITS != 0 {
                out.push(step.symbol);
            }
            state = step.next as usize;
        }
    }
    if ACCEPTING[state] {
        Ok(())
    } else {
        Err(HuffmanError::Padding)
    }
}

// Encoding: the response encoder writes plain literals (see `hpack`), so
// these serve the tests, as the decoder's counterpart.

/// The length of `input` once Huffman-coded, in bytes.
#[cfg(test)]
fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input.iter().map(|&b| CODES[b as usize].1 as usize).sum();
    bits.div_ceil(8)
}

/// Appends the Huffman coding of `input` to `out`, padded with ones.
#[cfg(test)]
fn encode(input: &[u8], out: &mut Vec<u8>) {
    let mut bits: u64 = 0;
    let mut pending = 0u32;
    for &b in input {
        let (code, len) = CODES[b as usize];
        bits = (bits << len) | code as u64;
        pending += len as u32;
        while pending >= 8 {
            pending -= 8;
            out.push((bits >> pending) as u8);
        }
    }
    if pending > 0 {
        let pad = 8 - pending;
        out.push(((bits << pad) | ((1 << pad) - 1)) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoded(input: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(input, &mut out).map(|()| out)
    }

    #[test]
    fn the_examples_of_rfc_7541_appendix_c4_decode() {
        // "www.example.com", "no-cache", "custom-key", "custom-value".
        let cases: [(&str, &str); 4] = [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
        ];
        for (hex, text) in cases {
            let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            assert_eq!(decoded(&bytes).unwrap(), text.as_bytes());
            let mut encoded = Vec::new();
            encode(text.as_bytes(), &mut encoded);
            assert_eq!(encoded, bytes);
            assert_eq!(encoded_len(text.as_bytes()), bytes.len());
        }
    }

    #[test]
    fn bad_padding_and_the_end_of_string_symbol_are_refused() {
        // "a" is 00011 (5 bits): three bits of ones pad it.
        assert_eq!(decoded(&[0b0001_1111]).unwrap(), b"a");
        // Padded with zeros instead.
        assert_eq!(decoded(&[0b0001_1000]), Err(HuffmanError::Padding));
        // A whole byte of ones after a complete symbol: padding longer than seven bits.
        assert_eq!(decoded(&[0b0001_1111, 0xff]), Err(HuffmanError::Padding));
        // The end-of-string code itself (30 ones).
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xff]), Err(HuffmanError::EndOfString));
        assert_eq!(decoded(&[]).unwrap(), b"");
    }

    proptest! {
        #[test]
        fn every_byte_string_survives_a_round_trip(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut encoded = Vec::new();
            encode(&input, &mut encoded);
            prop_assert_eq!(encoded.len(), encoded_len(&input));
            prop_assert_eq!(decoded(&encoded).unwrap(), input);
        }
    }
}
