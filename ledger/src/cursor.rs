//! A bounds-checked little-endian reader over a byte slice, shared by the entry and export decoders. Each decoder
//! names its own error type `E`, which a [`Truncated`] read turns into, so that every message still says which
//! format it was reading; each adds its own field readers in an `impl Cursor<'_, ItsError>` block.

use std::marker::PhantomData;

/// A read that needed more bytes than remain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Truncated {
    /// The field being read.
    pub what: &'static str,
    /// Where it starts.
    pub offset: usize,
    /// Bytes it needs.
    pub needed: usize,
    /// Bytes left.
    pub remaining: usize,
}

/// A position in `bytes`; reads advance it and never past the end.
pub(crate) struct Cursor<'a, E> {
    pub bytes: &'a [u8],
    pub offset: usize,
    error: PhantomData<fn() -> E>,
}

impl<'a, E: From<Truncated>> Cursor<'a, E> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0, error: PhantomData }
    }

    /// Bytes after the cursor.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    /// The next `needed` bytes, or [`Truncated`] (and the cursor unmoved) if fewer remain.
    pub fn take(&mut self, what: &'static str, needed: usize) -> Result<&'a [u8], E> {
        let remaining = self.remaining();
        if needed > remaining {
            return Err(Truncated { what, offset: self.offset, needed, remaining }.into());
        }
        let slice = &self.bytes[self.offset..self.offset + needed];
        self.offset += needed;
        Ok(slice)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], E> {
        let slice = self.take(what, N)?;
        Ok(slice.try_into().expect("take returned N bytes"))
    }

    /// The next byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, E> {
        Ok(self.array::<1>(what)?[0])
    }

    /// The next little-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, E> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// The next little-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, E> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Short(Truncated);

    impl From<Truncated> for Short {
        fn from(truncated: Truncated) -> Self {
            Self(truncated)
        }
    }

    #[test]
    fn reads_little_endian_and_refuses_to_run_past_the_end_without_moving() {
        let bytes = [7, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut cursor = Cursor::<Short>::new(&bytes);
        assert_eq!(cursor.u8("tag"), Ok(7));
        assert_eq!(cursor.u32("count"), Ok(1));
        assert_eq!(cursor.u64("size"), Ok(2));
        assert_eq!((cursor.offset, cursor.remaining()), (13, 1));
        let error = cursor.u32("length").unwrap_err();
        assert_eq!(error, Short(Truncated { what: "length", offset: 13, needed: 4, remaining: 1 }));
        assert_eq!(cursor.offset, 13);
        assert_eq!(cursor.take("rest", 1), Ok(&[9][..]));
        assert_eq!(cursor.remaining(), 0);
    }
}
