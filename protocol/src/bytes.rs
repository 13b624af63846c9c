//! A little-endian reader and writer for the canonical binary formats. Every read names the
//! field it reads, so a truncated input produces an error that says what was missing.

/// Why a canonical encoding could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("input truncated: {field} needs {needed} bytes, {available} left")]
    Truncated {
        field: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{field} = {value} exceeds the limit of {limit}")]
    TooLarge {
        field: &'static str,
        value: u64,
        limit: u64,
    },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], ReadError> {
        if self.bytes.len() < len {
            return Err(ReadError::Truncated {
                field,
                needed: len,
                available: self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ReadError> {
        Ok(self.take(field, N)?.try_into().expect("length checked"))
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, ReadError> {
        Ok(self.take(field, 1)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, ReadError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub fn u128(&mut self, field: &'static str) -> Result<u128, ReadError> {
        Ok(u128::from_le_bytes(self.array(field)?))
    }

    /// A count, checked against `limit` before anything is allocated for it.
    pub fn count(
        &mut self,
        field: &'static str,
        width: usize,
        limit: u64,
    ) -> Result<usize, ReadError> {
        let value = match width {
            1 => u64::from(self.u8(field)?),
            2 => u64::from(self.u16(field)?),
            4 => u64::from(self.u32(field)?),
            _ => self.u64(field)?,
        };
        if value > limit {
            return Err(ReadError::TooLarge {
                field,
                value,
                limit,
            });
        }
        Ok(value as usize)
    }

    /// A UTF-8 string with a 16-bit length.
    pub fn string(&mut self, field: &'static str, limit: u64) -> Result<String, ReadError> {
        let len = self.count(field, 2, limit)?;
        let bytes = self.take(field, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ReadError::Invalid {
            field,
            reason: "not UTF-8".into(),
        })
    }

    /// Requires the rest of the input to be exactly `expected` bytes.
    pub fn expect_remaining(&self, field: &'static str, expected: u64) -> Result<(), ReadError> {
        if self.bytes.len() as u64 != expected {
            return Err(ReadError::Invalid {
                field,
                reason: format!("expected {expected} more bytes, found {}", self.bytes.len()),
            });
        }
        Ok(())
    }

    pub fn finish(&self, field: &'static str) -> Result<(), ReadError> {
        self.expect_remaining(field, 0)
    }
}

#[derive(Debug, Default)]
pub struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.bytes.push(value);
        self
    }

    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(value);
        self
    }

    pub fn string(&mut self, value: &str) -> &mut Self {
        self.u16(value.len() as u16).bytes(value.as_bytes())
    }
}
