//! Vectors inline in one contiguous slab, each on a cache line, and their half-width copies.

use half::f16;

use crate::index::kernels;

/// Vectors stored back to back, each padded to whole cache lines and the first starting on a
/// line boundary, so a vector never straddles more lines than it needs and a prefetch of its
/// first line is a prefetch of its start. `T` is `f32` for the exact vectors and `f16` for the
/// half-width copies that searches walk the graph with (see [`Graph::coarse`]).
///
/// The alignment is done without `unsafe`: the buffer is over-allocated by one line and used
/// from the first line boundary inside it. Growth therefore copies by hand (a reallocation
/// could move the boundary), doubling, so it is amortised.
pub(super) struct Slab<T> {
    data: Vec<T>,
    /// Index in `data` of the first vector (the first line boundary).
    start: usize,
    dimensions: usize,
    /// Values per vector including padding: `dimensions` rounded up to whole lines.
    stride: usize,
    len: usize,
}

impl<T: Copy + Default> Slab<T> {
    /// Values of `T` per 64-byte cache line.
    pub(super) const PER_LINE: usize = 64 / std::mem::size_of::<T>();

    pub(super) fn new(dimensions: usize) -> Self {
        Self {
            data: Vec::new(),
            start: 0,
            dimensions,
            stride: dimensions.div_ceil(Self::PER_LINE).max(1) * Self::PER_LINE,
            len: 0,
        }
    }

    #[inline]
    pub(super) fn get(&self, row: u32) -> &[T] {
        let at = self.start + row as usize * self.stride;
        &self.data[at..at + self.dimensions]
    }

    /// Overwrites a row's vector (a reused tombstone's).
    pub(super) fn set(&mut self, row: u32, vector: &[T]) {
        let at = self.start + row as usize * self.stride;
        self.data[at..at + self.dimensions].copy_from_slice(&vector[..self.dimensions]);
    }

    pub(super) fn push(&mut self, vector: &[T]) {
        let end = self.start + (self.len + 1) * self.stride;
        if end > self.data.capacity() {
            self.grow((self.len * 2).max(1024));
        }
        self.data.extend_from_slice(&vector[..self.dimensions]);
        // Padding; `resize` within the capacity never reallocates.
        self.data
            .resize(self.start + (self.len + 1) * self.stride, T::default());
        self.len += 1;
    }

    pub(super) fn grow(&mut self, rows: usize) {
        let mut data = Vec::with_capacity(rows * self.stride + Self::PER_LINE);
        kernels::advise_huge_pages(&data);
        // An allocation of `T` is aligned to `T`, so the distance to the next line boundary is
        // a whole number of values.
        let size = std::mem::size_of::<T>();
        let past_boundary = (data.as_ptr() as usize % 64) / size;
        let start = (Self::PER_LINE - past_boundary) % Self::PER_LINE;
        data.resize(start, T::default());
        data.extend_from_slice(&self.data[self.start..]);
        self.data = data;
        self.start = start;
    }
}

/// `vector` at half width, each value rounded to the nearest f16.
pub(super) fn to_f16(vector: &[f32]) -> Vec<f16> {
    vector.iter().map(|&x| f16::from_f32(x)).collect()
}
