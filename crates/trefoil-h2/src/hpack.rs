//! HPACK, HTTP/2's header compression (RFC 7541).
//!
//! The decoder is complete: static and dynamic table, Huffman strings,
//! table size updates, and limits on what a peer can make it hold. Values
//! that arrive as plain literals are slices of the header block, not copies.
//!
//! The encoder is made for a server's responses and spends as little as it
//! can: it never adds to its dynamic table (and says so, with a size
//! update to zero, in its first block), names a header by its static-table
//! index where there is one, and writes values as plain literals. The
//! bytes saved by indexing and Huffman coding do not pay for their CPU on
//! the links a proxy serves; the decoder on the other side does less work
//! too.

use std::collections::VecDeque;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;

use crate::huffman::{self, HuffmanError};

/// A field's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    Pseudo(Pseudo),
    Header(HeaderName),
    /// Not a valid lower-case field name nor a known pseudo-header. The
    /// field still counts for the dynamic table; the message is malformed.
    Malformed(Bytes),
}

/// The pseudo-header fields of RFC 9113 §8.3 (and RFC 8441's `:protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pseudo {
    Authority,
    Method,
    Path,
    Scheme,
    Status,
    Protocol,
}

impl Pseudo {
    pub fn as_str(self) -> &'static str {
        match self {
            Pseudo::Authority => ":authority",
            Pseudo::Method => ":method",
            Pseudo::Path => ":path",
            Pseudo::Scheme => ":scheme",
            Pseudo::Status => ":status",
            Pseudo::Protocol => ":protocol",
        }
    }
}

impl Name {
    fn parse(bytes: Bytes) -> Name {
        match &bytes[..] {
            b":authority" => Name::Pseudo(Pseudo::Authority),
            b":method" => Name::Pseudo(Pseudo::Method),
            b":path" => Name::Pseudo(Pseudo::Path),
            b":scheme" => Name::Pseudo(Pseudo::Scheme),
            b":status" => Name::Pseudo(Pseudo::Status),
            b":protocol" => Name::Pseudo(Pseudo::Protocol),
            // `from_bytes` would accept upper case and lower it; HTTP/2 must refuse it (RFC 9113 §8.2.1).
            raw if raw.iter().any(u8::is_ascii_uppercase) => Name::Malformed(bytes),
            raw => match HeaderName::from_bytes(raw) {
                Ok(name) => Name::Header(name),
                Err(_) => Name::Malformed(bytes),
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            Name::Pseudo(p) => p.as_str().len(),
            Name::Header(h) => h.as_str().len(),
            Name::Malformed(b) => b.len(),
        }
    }
}

/// One decoded field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Name,
    pub value: Bytes,
    /// Sent as "never indexed": an intermediary must forward it the same way.
    pub sensitive: bool,
}

impl Field {
    /// The size the field counts for in a dynamic table and in a header list (RFC 7541 §4.1).
    pub fn size(&self) -> usize {
        self.name.len() + self.value.len() + 32
    }
}

/// Why a header block does not decode. Each is a connection error of type
/// COMPRESSION_ERROR, except `ListTooLarge`: the block was decoded whole
/// (the table is in step) and only the message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("header block ends in the middle of a field")]
    Truncated,
    #[error("integer too large in header block")]
    IntegerOverflow,
    #[error("index {0} is in neither the static nor the dynamic table")]
    BadIndex(usize),
    #[error("Huffman-coded string: {0:?}")]
    Huffman(HuffmanError),
    #[error("dynamic table size update to {size} over the limit {limit}")]
    TableSizeOverLimit { size: usize, limit: usize },
    #[error("dynamic table size update after the first field of a block")]
    LateTableSizeUpdate,
    #[error("string of {0} bytes longer than the header list may be")]
    StringTooLong(usize),
    #[error("header list larger than {0} bytes")]
    ListTooLarge(usize),
}

macro_rules! static_table {
    ($(($name:expr, $value:expr)),* $(,)?) => {
        [$(StaticEntry { name: $name, value: $value }),*]
    };
}

struct StaticEntry {
    name: StaticName,
    value: &'static str,
}

enum StaticName {
    Pseudo(Pseudo),
    Header(HeaderName),
}

use StaticName::{Header as H, Pseudo as P};

/// RFC 7541 Appendix A; index 1 is the first entry.
static STATIC_TABLE: [StaticEntry; 61] = static_table![
    (P(Pseudo::Authority), ""),
    (P(Pseudo::Method), "GET"),
    (P(Pseudo::Method), "POST"),
    (P(Pseudo::Path), "/"),
    (P(Pseudo::Path), "/index.html"),
    (P(Pseudo::Scheme), "http"),
    (P(Pseudo::Scheme), "https"),
    (P(Pseudo::Status), "200"),
    (P(Pseudo::Status), "204"),
    (P(Pseudo::Status), "206"),
    (P(Pseudo::Status), "304"),
    (P(Pseudo::Status), "400"),
    (P(Pseudo::Status), "404"),
    (P(Pseudo::Status), "500"),
    (H(header::ACCEPT_CHARSET), ""),
    (H(header::ACCEPT_ENCODING), "gzip, deflate"),
    (H(header::ACCEPT_LANGUAGE), ""),
    (H(header::ACCEPT_RANGES), ""),
    (H(header::ACCEPT), ""),
    (H(header::ACCESS_CONTROL_ALLOW_ORIGIN), ""),
    (H(header::AGE), ""),
    (H(header::ALLOW), ""),
    (H(header::AUTHORIZATION), ""),
    (H(header::CACHE_CONTROL), ""),
    (H(header::CONTENT_DISPOSITION), ""),
    (H(header::CONTENT_ENCODING), ""),
    (H(header::CONTENT_LANGUAGE), ""),
    (H(header::CONTENT_LENGTH), ""),
    (H(header::CONTENT_LOCATION), ""),
    (H(header::CONTENT_RANGE), ""),
    (H(header::CONTENT_TYPE), ""),
    (H(header::COOKIE), ""),
    (H(header::DATE), ""),
    (H(header::ETAG), ""),
    (H(header::EXPECT), ""),
    (H(header::EXPIRES), ""),
    (H(header::FROM), ""),
    (H(header::HOST), ""),
    (H(header::IF_MATCH), ""),
    (H(header::IF_MODIFIED_SINCE), ""),
    (H(header::IF_NONE_MATCH), ""),
    (H(header::IF_RANGE), ""),
    (H(header::IF_UNMODIFIED_SINCE), ""),
    (H(header::LAST_MODIFIED), ""),
    (H(header::LINK), ""),
    (H(header::LOCATION), ""),
    (H(header::MAX_FORWARDS), ""),
    (H(header::PROXY_AUTHENTICATE), ""),
    (H(header::PROXY_AUTHORIZATION), ""),
    (H(header::RANGE), ""),
    (H(header::REFERER), ""),
    (H(header::REFRESH), ""),
    (H(header::RETRY_AFTER), ""),
    (H(header::SERVER), ""),
    (H(header::SET_COOKIE), ""),
    (H(header::STRICT_TRANSPORT_SECURITY), ""),
    (H(header::TRANSFER_ENCODING), ""),
    (H(header::USER_AGENT), ""),
    (H(header::VARY), ""),
    (H(header::VIA), ""),
    (H(header::WWW_AUTHENTICATE), ""),
];

impl StaticEntry {
    fn name(&self) -> Name {
        match &self.name {
            StaticName::Pseudo(p) => Name::Pseudo(*p),
            StaticName::Header(h) => Name::Header(h.clone()),
        }
    }
}

/// The decoder's dynamic table (RFC 7541 §2.3.2): newest entry first.
#[derive(Debug, Default)]
struct DynamicTable {
    entries: VecDeque<Field>,
    size: usize,
    max_size: usize,
}

impl DynamicTable {
    fn get(&self, index: usize) -> Option<&Field> {
        self.entries.get(index)
    }

    fn insert(&mut self, field: Field) {
        let size = field.size();
        self.evict_to(self.max_size.saturating_sub(size));
        // An entry larger than the table empties it and is not kept (§4.4).
        if size <= self.max_size {
            self.size += size;
            self.entries.push_front(field);
        }
    }

    fn resize(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, room: usize) {
        while self.size > room {
            let Some(old) = self.entries.pop_back() else { break };
            self.size -= old.size();
        }
    }
}

/// Decodes the header blocks of one connection, in order.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The largest table the peer may ask for: our SETTINGS_HEADER_TABLE_SIZE.
    table_size_limit: usize,
    /// The largest header list accepted: our SETTINGS_MAX_HEADER_LIST_SIZE.
    max_list_size: usize,
    scratch: Vec<u8>,
}

impl Decoder {
    pub fn new(table_size_limit: usize, max_list_size: usize) -> Self {
        Decoder {
            table: DynamicTable { max_size: table_size_limit, ..DynamicTable::default() },
            table_size_limit,
            max_list_size,
            scratch: Vec::new(),
        }
    }

    /// Decodes one whole header block (a HEADERS frame's fragment and those
    /// of its CONTINUATIONs, joined), handing each field to `field` in order.
    ///
    /// A header list over the limit is decoded to its end all the same, so
    /// that the table stays in step with the peer's, and then refused.
    pub fn decode(&mut self, block: &Bytes, mut field: impl FnMut(Field)) -> Result<(), DecodeError> {
        let mut at = 0;
        let mut list_size = 0usize;
        let mut first = true;
        while at < block.len() {
            let byte = block[at];
            let decoded = if byte & 0x80 != 0 {
                let index = decode_int(block, &mut at, 7)?;
                self.indexed(index)?
            } else if byte & 0xc0 == 0x40 {
                let f = self.literal(block, &mut at, 6, false)?;
                self.table.insert(f.clone());
                f
            } else if byte & 0xe0 == 0x20 {
                if !first {
                    return Err(DecodeError::LateTableSizeUpdate);
                }
                let size = decode_int(block, &mut at, 5)?;
                if size > self.table_size_limit {
                    return Err(DecodeError::TableSizeOverLimit { size, limit: self.table_size_limit });
                }
                self.table.resize(size);
                continue;
            } else {
                // 0000 without indexing, 0001 never indexed.
                self.literal(block, &mut at, 4, byte & 0x10 != 0)?
            };
            first = false;
            list_size = list_size.saturating_add(decoded.size());
            if list_size <= self.max_list_size {
                field(decoded);
            }
        }
        if list_size > self.max_list_size {
            return Err(DecodeError::ListTooLarge(self.max_list_size));
        }
        Ok(())
    }

    fn indexed(&self, index: usize) -> Result<Field, DecodeError> {
        match index {
            0 => Err(DecodeError::BadIndex(0)),
            1..=61 => {
                let entry = &STATIC_TABLE[index - 1];
                Ok(Field { name: entry.name(), value: Bytes::from_static(entry.value.as_bytes()), sensitive: false })
            }
            _ => self.table.get(index - 62).cloned().ok_or(DecodeError::BadIndex(index)),
        }
    }

    fn literal(&mut self, block: &Bytes, at: &mut usize, prefix: u8, sensitive: bool) -> Result<Field, DecodeError> {
        let index = decode_int(block, at, prefix)?;
        let name = if index == 0 { Name::parse(self.string(block, at)?) } else { self.indexed(index)?.name };
        let value = self.string(block, at)?;
        Ok(Field { name, value, sensitive })
    }

    fn string(&mut self, block: &Bytes, at: &mut usize) -> Result<Bytes, DecodeError> {
        let huffman = *block.get(*at).ok_or(DecodeError::Truncated)? & 0x80 != 0;
        let len = decode_int(block, at, 7)?;
        if len > self.max_list_size {
            return Err(DecodeError::StringTooLong(len));
        }
        let end = at.checked_add(len).filter(|&end| end <= block.len()).ok_or(DecodeError::Truncated)?;
        let raw = &block[*at..end];
        let string = if huffman {
            self.scratch.clear();
            huffman::decode(raw, &mut self.scratch).map_err(DecodeError::Huffman)?;
            Bytes::copy_from_slice(&self.scratch)
        } else {
            block.slice(*at..end)
        };
        *at = end;
        Ok(string)
    }
}

/// Reads an integer with an N-bit prefix (RFC 7541 §5.1) at `at`.
fn decode_int(block: &[u8], at: &mut usize, prefix: u8) -> Result<usize, DecodeError> {
    let mask = (1usize << prefix) - 1;
    let mut value = *block.get(*at).ok_or(DecodeError::Truncated)? as usize & mask;
    *at += 1;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or(DecodeError::Truncated)?;
        *at += 1;
        // Four continuation bytes reach 2^28 and more: no header needs that.
        if shift > 21 {
            return Err(DecodeError::IntegerOverflow);
        }
        value += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Writes an integer with an N-bit prefix; `flags` are the first byte's bits above the prefix.
#[inline]
fn encode_int(mut value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Encodes the header blocks of one connection's responses.
#[derive(Debug, Default)]
pub struct Encoder {
    /// Whether the first block, with its size update to zero, has been written.
    started: bool,
}

impl Encoder {
    pub fn new() -> Self {
        Encoder::default()
    }

    /// Starts a header block with the response's status.
    pub fn encode_status(&mut self, status: StatusCode, out: &mut Vec<u8>) {
        if !self.started {
            // The table is never used: size zero, whatever the peer allows (RFC 7541 §6.3).
            encode_int(0, 5, 0x20, out);
            self.started = true;
        }
        let index = match status.as_u16() {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => 0,
        };
        if index != 0 {
            encode_int(index, 7, 0x80, out);
        } else {
            encode_int(8, 4, 0x00, out);
            encode_plain(status.as_str().as_bytes(), out);
        }
    }

    /// Adds a field to the block: a literal that is not indexed, or never
    /// indexed for a value marked sensitive.
    pub fn encode_field(&mut self, name: &HeaderName, value: &HeaderValue, out: &mut Vec<u8>) {
        let flags = if value.is_sensitive() { 0x10 } else { 0x00 };
        match static_name_index(name) {
            Some(index) => encode_int(index, 4, flags, out),
            None => {
                out.push(flags);
                encode_plain(name.as_str().as_bytes(), out);
            }
        }
        encode_plain(value.as_bytes(), out);
    }
}

#[inline]
fn encode_plain(s: &[u8], out: &mut Vec<u8>) {
    encode_int(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// The static-table index of a response header's name, for the names a
/// response carries; others are written out.
fn static_name_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "accept-ranges" => 18,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "date" => 33,
        "etag" => 34,
        "expires" => 36,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "proxy-authenticate" => 48,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<u8>>().into()
    }

    fn decode_all(decoder: &mut Decoder, block: &Bytes) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        decoder
            .decode(block, |f| {
                let name = match f.name {
                    Name::Pseudo(p) => p.as_str().to_string(),
                    Name::Header(h) => h.as_str().to_string(),
                    Name::Malformed(b) => format!("malformed:{}", String::from_utf8_lossy(&b)),
                };
                fields.push((name, String::from_utf8(f.value.to_vec()).unwrap()));
            })
            .unwrap();
        fields
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    /// RFC 7541 C.3 (plain literals) and C.4 (the same requests, Huffman-coded):
    /// three requests on one connection, sharing a dynamic table.
    #[test]
    fn the_request_examples_of_rfc_7541_appendix_c_decode_with_their_table() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut decoder = Decoder::new(4096, 16384);
            let first = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
            assert_eq!(decode_all(&mut decoder, &hex(blocks[0])), pairs(&first));
            assert_eq!(decoder.table.size, 57);
            let second =
                [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"), ("cache-control", "no-cache")];
            assert_eq!(decode_all(&mut decoder, &hex(blocks[1])), pairs(&second));
            assert_eq!(decoder.table.size, 110);
            let third = [
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ];
            assert_eq!(decode_all(&mut decoder, &hex(blocks[2])), pairs(&third));
            assert_eq!(decoder.table.size, 164);
            assert_eq!(decoder.table.entries.len(), 3);
        }
    }

    /// RFC 7541 C.5: responses with a 256-byte table, so entries are evicted.
    #[test]
    fn the_response_examples_of_rfc_7541_appendix_c5_evict_as_the_table_fills() {
        let mut decoder = Decoder::new(256, 16384);
        decoder.table.resize(256);
        let blocks = [
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
        ];
        let first = decode_all(&mut decoder, &hex(blocks[0]));
        assert_eq!(first[0], (":status".to_string(), "302".to_string()));
        assert_eq!(decoder.table.size, 222);
        let second = decode_all(&mut decoder, &hex(blocks[1]));
        assert_eq!(second[0].1, "307");
        assert_eq!(second[3], ("location".to_string(), "https://www.example.com".to_string()));
        assert_eq!(decoder.table.size, 222);
        let third = decode_all(&mut decoder, &hex(blocks[2]));
        assert_eq!(third[0].1, "200");
        assert_eq!(third[5], ("set-cookie".to_string(), "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1".to_string()));
        assert_eq!(decoder.table.size, 215);
        assert_eq!(decoder.table.entries.len(), 3);
    }

    #[test]
    fn bad_blocks_are_refused() {
        let mut decoder = Decoder::new(4096, 100);
        let mut err = |block: &[u8]| decoder.decode(&Bytes::copy_from_slice(block), |_| {}).unwrap_err();
        assert_eq!(err(&[0x80]), DecodeError::BadIndex(0));
        assert_eq!(err(&[0xbe]), DecodeError::BadIndex(62), "the dynamic table is empty");
        assert_eq!(err(&[0x41, 0x05, b'a']), DecodeError::Truncated);
        assert_eq!(err(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), DecodeError::IntegerOverflow);
        // 31 + 0x62 + (0x1f << 7) = 4097.
        assert_eq!(err(&[0x3f, 0xe2, 0x1f]), DecodeError::TableSizeOverLimit { size: 4097, limit: 4096 });
        assert_eq!(err(&[0x82, 0x20]), DecodeError::LateTableSizeUpdate);
        assert_eq!(err(&[0x00, 0x01, b'a', 0x7f, 0x01]), DecodeError::StringTooLong(128));
    }

    #[test]
    fn a_list_over_the_limit_is_decoded_whole_and_then_refused() {
        let mut decoder = Decoder::new(4096, 64);
        // Two literals with incremental indexing, 32 + 1 + 20 bytes each.
        let mut block = Vec::new();
        for name in [b"a", b"b"] {
            block.extend_from_slice(&[0x40, 0x01, name[0], 20]);
            block.extend_from_slice(&[b'x'; 20]);
        }
        let mut seen = 0;
        assert_eq!(decoder.decode(&block.into(), |_| seen += 1), Err(DecodeError::ListTooLarge(64)));
        assert_eq!(seen, 1);
        assert_eq!(decoder.table.entries.len(), 2, "both entries are in the table, in step with the peer's");
    }

    #[test]
    fn upper_case_and_unknown_pseudo_names_are_marked_malformed() {
        let mut decoder = Decoder::new(4096, 16384);
        let block: Vec<u8> =
            [&[0x00, 0x01][..], b"A", &[0x01], b"x", &[0x00, 0x04], b":foo", &[0x01], b"y", &[0x10, 0x01], b"k", &[0x01], b"z"].concat();
        let fields = decode_all(&mut decoder, &block.into());
        assert_eq!(fields, pairs(&[("malformed:A", "x"), ("malformed::foo", "y"), ("k", "z")]));
    }

    #[test]
    fn responses_encode_to_what_the_decoder_reads_back() {
        let mut encoder = Encoder::new();
        let mut decoder = Decoder::new(4096, 16384);
        for status in [200u16, 404, 302] {
            let mut block = Vec::new();
            encoder.encode_status(StatusCode::from_u16(status).unwrap(), &mut block);
            encoder.encode_field(&header::CONTENT_TYPE, &HeaderValue::from_static("text/plain"), &mut block);
            encoder.encode_field(&HeaderName::from_static("x-served-by"), &HeaderValue::from_static("backend"), &mut block);
            let mut secret = HeaderValue::from_static("s3cr3t");
            secret.set_sensitive(true);
            encoder.encode_field(&header::SET_COOKIE, &secret, &mut block);
            let mut sensitive = Vec::new();
            decoder.decode(&block.into(), |f| sensitive.push(f.sensitive)).unwrap();
            assert_eq!(sensitive, [false, false, false, true]);
        }
        let mut block = Vec::new();
        encoder.encode_status(StatusCode::OK, &mut block);
        assert_eq!(block, [0x88], "the size update comes in the first block only");
        assert!(decoder.table.entries.is_empty(), "nothing is indexed");
    }

    proptest! {
        #[test]
        fn integers_survive_a_round_trip(value in 0usize..(1 << 28), prefix in 1u8..=8) {
            let mut out = Vec::new();
            encode_int(value, prefix, 0, &mut out);
            let mut at = 0;
            prop_assert_eq!(decode_int(&out, &mut at, prefix), Ok(value));
            prop_assert_eq!(at, out.len());
        }

        #[test]
        fn arbitrary_blocks_never_panic(block in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut decoder = Decoder::new(256, 1024);
            let _ = decoder.decode(&block.into(), |_| {});
        }
    }
}
