//! NumPy `.npy` files: a 2-D array, row-major (C order), of float32 (or float64, or uint8)
//! vectors, or of int32/int64 neighbour ids.
//!
//! The header is a small Python dict literal (`descr`, `fortran_order`, `shape`); only its three
//! keys are read, by hand, which keeps a parser of Python literals out of the build. The data
//! length is checked against the shape before any load; points are read through a buffer.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::dataset::error::{Problem, Result};
use crate::dataset::rows::{Batch, Matrix, PointReader, corrupt, fail, file_len, io};

/// The element types read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
    U8,
    I32,
    I64,
}

impl Dtype {
    fn parse(descr: &str) -> Option<Self> {
        match descr {
            "<f4" => Some(Self::F32),
            "<f8" => Some(Self::F64),
            "|u1" | "<u1" => Some(Self::U8),
            "<i4" => Some(Self::I32),
            "<i8" => Some(Self::I64),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64 | Self::U8)
    }

    fn f32s(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            Self::F32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Self::F64 => out.extend(bytes.chunks_exact(8).map(|c| {
                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            })),
            Self::U8 => out.extend(bytes.iter().map(|&b| f32::from(b))),
            Self::I32 | Self::I64 => {}
        }
    }

    fn i64s(self, bytes: &[u8], out: &mut Vec<i64>) {
        match self {
            Self::I32 => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            ),
            Self::I64 => out.extend(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
            ),
            Self::F32 | Self::F64 | Self::U8 => {}
        }
    }
}

/// A checked header: the array's shape and element type, and where its data starts.
#[derive(Debug, Clone, Copy)]
struct Header {
    dtype: Dtype,
    rows: u64,
    width: usize,
}

/// The value of `key` in the header dict: the text after `'key':` up to the next top-level
/// comma or closing brace.
fn entry<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let start = dict.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = dict[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

fn header(path: &Path, reader: &mut impl Read) -> Result<Header> {
    let len = file_len(path)?;
    let mut magic = [0u8; 10];
    reader.read_exact(&mut magic).map_err(|_| {
        fail(
            path,
            Problem::Truncated {
                expected: 10,
                got: len,
            },
        )
    })?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(corrupt(path, "not a .npy file (no \\x93NUMPY magic)"));
    }
    let (dict_len, prefix) = match magic[6] {
        1 => (u64::from(u16::from_le_bytes([magic[8], magic[9]])), 10),
        2 | 3 => {
            let mut more = [0u8; 2];
            reader.read_exact(&mut more).map_err(io(path))?;
            (
                u64::from(u32::from_le_bytes([magic[8], magic[9], more[0], more[1]])),
                12,
            )
        }
        v => return Err(corrupt(path, format!("unknown .npy version {v}"))),
    };
    if prefix + dict_len > len {
        return Err(fail(
            path,
            Problem::Truncated {
                expected: prefix + dict_len,
                got: len,
            },
        ));
    }
    let mut dict = vec![0u8; dict_len as usize];
    reader.read_exact(&mut dict).map_err(io(path))?;
    let dict = String::from_utf8_lossy(&dict);
    let descr = entry(&dict, "descr")
        .map(|d| d.trim_matches(['\'', '"']))
        .ok_or_else(|| corrupt(path, "header has no descr"))?;
    let dtype = Dtype::parse(descr).ok_or_else(|| {
        corrupt(
            path,
            format!("element type {descr} (expected <f4, <f8, |u1, <i4 or <i8)"),
        )
    })?;
    if entry(&dict, "fortran_order") != Some("False") {
        return Err(corrupt(
            path,
            "array is in Fortran order (expected C order)",
        ));
    }
    let shape = entry(&dict, "shape").ok_or_else(|| corrupt(path, "header has no shape"))?;
    let dims: Vec<u64> = shape
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| corrupt(path, format!("shape {shape}")))?;
    let [rows, width] = dims[..] else {
        return Err(corrupt(
            path,
            format!("shape {shape} is not 2-D (rows, dimensions)"),
        ));
    };
    let expected = prefix + dict_len + rows * width * dtype.size() as u64;
    if len < expected {
        return Err(fail(path, Problem::Truncated { expected, got: len }));
    }
    Ok(Header {
        dtype,
        rows,
        width: width as usize,
    })
}

/// Streams the rows of a 2-D float `.npy` file as points; ids are row numbers.
pub struct Points {
    path: PathBuf,
    reader: BufReader<File>,
    header: Header,
    next: u64,
    row: Vec<u8>,
}

impl Points {
    /// Opens `path`, checking its header against its length.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io(path))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let header = header(path, &mut reader)?;
        if !header.dtype.is_float() {
            return Err(corrupt(path, "integer array where vectors are expected"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            row: vec![0; header.width * header.dtype.size()],
            header,
            next: 0,
        })
    }
}

impl PointReader for Points {
    fn len(&self) -> u64 {
        self.header.rows
    }

    fn dimensions(&self) -> usize {
        self.header.width
    }

    fn next_batch(&mut self, max: usize, batch: &mut Batch) -> Result<()> {
        batch.ids.clear();
        batch.vectors.clear();
        while batch.ids.len() < max && self.next < self.header.rows {
            self.reader
                .read_exact(&mut self.row)
                .map_err(io(&self.path))?;
            self.header.dtype.f32s(&self.row, &mut batch.vectors);
            batch.ids.push(self.next);
            self.next += 1;
        }
        Ok(())
    }
}

/// Reads a whole float `.npy` file as queries.
pub fn read_queries(path: &Path) -> Result<Matrix<f32>> {
    let mut points = Points::open(path)?;
    let mut batch = Batch::default();
    points.next_batch(usize::MAX, &mut batch)?;
    Ok(Matrix {
        width: points.dimensions(),
        values: batch.vectors,
    })
}

/// Reads a whole integer `.npy` file as neighbour ids.
pub fn read_neighbors(path: &Path) -> Result<Matrix<i64>> {
    let file = File::open(path).map_err(io(path))?;
    let mut reader = BufReader::new(file);
    let header = header(path, &mut reader)?;
    if header.dtype.is_float() {
        return Err(corrupt(
            path,
            "float array where neighbour ids are expected (<i4 or <i8)",
        ));
    }
    let mut bytes = vec![0u8; header.rows as usize * header.width * header.dtype.size()];
    reader.read_exact(&mut bytes).map_err(io(path))?;
    let mut values = Vec::with_capacity(header.rows as usize * header.width);
    header.dtype.i64s(&bytes, &mut values);
    Ok(Matrix {
        width: header.width,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::entry;

    #[test]
    fn header_entries_are_read_from_numpys_dict() {
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (100, 8), }";
        assert_eq!(entry(dict, "descr"), Some("'<f4'"));
        assert_eq!(entry(dict, "fortran_order"), Some("False"));
        assert_eq!(entry(dict, "shape"), Some("(100, 8)"));
        assert_eq!(entry(dict, "other"), None);
    }
}
