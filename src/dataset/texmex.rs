//! The TEXMEX formats of the SIFT and GIST sets: `.fvecs` (f32), `.bvecs` (u8) and `.ivecs`
//! (i32, ground truth). Each row is its width as a little-endian i32, then its values.
//!
//! The width is read from the first row; the file's length must be a whole number of rows of
//! that width, and the last row must announce the same width, which catches a truncated or
//! mixed file before any load without reading it all. Points are read through a buffer, row
//! after row, never held whole.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::dataset::error::{Problem, Result};
use crate::dataset::rows::{Batch, Matrix, PointReader, fail, file_len, io};

/// The element type of a TEXMEX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// `.fvecs`: f32.
    F32,
    /// `.bvecs`: u8.
    U8,
    /// `.ivecs`: i32.
    I32,
}

impl Element {
    fn size(self) -> u64 {
        match self {
            Self::U8 => 1,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// The shape of a TEXMEX file, checked against its length.
#[derive(Debug, Clone, Copy)]
struct Shape {
    rows: u64,
    width: usize,
    element: Element,
}

impl Shape {
    fn row_bytes(self) -> u64 {
        4 + self.width as u64 * self.element.size()
    }
}

fn read_width(file: &mut File, path: &Path) -> Result<i32> {
    let mut head = [0u8; 4];
    file.read_exact(&mut head).map_err(io(path))?;
    Ok(i32::from_le_bytes(head))
}

fn shape(path: &Path, element: Element) -> Result<(File, Shape)> {
    let len = file_len(path)?;
    let mut file = File::open(path).map_err(io(path))?;
    if len == 0 {
        return Ok((
            file,
            Shape {
                rows: 0,
                width: 0,
                element,
            },
        ));
    }
    if len < 4 {
        return Err(fail(
            path,
            Problem::Truncated {
                expected: 4,
                got: len,
            },
        ));
    }
    let width = read_width(&mut file, path)?;
    if width <= 0 || width > 1 << 20 {
        return Err(fail(
            path,
            Problem::Corrupt(format!("first row announces {width} values")),
        ));
    }
    let shape = Shape {
        rows: len / (4 + width as u64 * element.size()),
        width: width as usize,
        element,
    };
    if len % shape.row_bytes() != 0 {
        return Err(fail(
            path,
            Problem::Truncated {
                expected: (shape.rows + 1) * shape.row_bytes(),
                got: len,
            },
        ));
    }
    file.seek(SeekFrom::Start(len - shape.row_bytes()))
        .map_err(io(path))?;
    let last = read_width(&mut file, path)?;
    if last != width {
        return Err(fail(
            path,
            Problem::Corrupt(format!(
                "last row announces {last} values, the first {width}"
            )),
        ));
    }
    file.seek(SeekFrom::Start(0)).map_err(io(path))?;
    Ok((file, shape))
}

/// Streams the points of an `.fvecs` or `.bvecs` file; ids are row numbers.
pub struct Points {
    path: PathBuf,
    reader: BufReader<File>,
    shape: Shape,
    next: u64,
    row: Vec<u8>,
}

impl Points {
    /// Opens `path`, checking its shape.
    pub fn open(path: &Path, element: Element) -> Result<Self> {
        let (file, shape) = shape(path, element)?;
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            row: vec![0; shape.row_bytes() as usize],
            shape,
            next: 0,
        })
    }
}

impl PointReader for Points {
    fn len(&self) -> u64 {
        self.shape.rows
    }

    fn dimensions(&self) -> usize {
        self.shape.width
    }

    fn next_batch(&mut self, max: usize, batch: &mut Batch) -> Result<()> {
        batch.ids.clear();
        batch.vectors.clear();
        let width = self.shape.width;
        while batch.ids.len() < max && self.next < self.shape.rows {
            self.reader
                .read_exact(&mut self.row)
                .map_err(io(&self.path))?;
            let announced =
                i32::from_le_bytes([self.row[0], self.row[1], self.row[2], self.row[3]]);
            if announced as usize != width {
                return Err(fail(
                    &self.path,
                    Problem::Corrupt(format!(
                        "row {} announces {announced} values, the first {width}",
                        self.next
                    )),
                ));
            }
            let body = &self.row[4..];
            match self.shape.element {
                Element::U8 => batch.vectors.extend(body.iter().map(|&b| f32::from(b))),
                Element::F32 | Element::I32 => batch.vectors.extend(
                    body.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                ),
            }
            batch.ids.push(self.next);
            self.next += 1;
        }
        Ok(())
    }
}

/// Reads a whole `.fvecs`/`.bvecs` file as queries.
pub fn read_queries(path: &Path, element: Element) -> Result<Matrix<f32>> {
    let mut points = Points::open(path, element)?;
    let mut batch = Batch::default();
    points.next_batch(usize::MAX, &mut batch)?;
    Ok(Matrix {
        width: points.dimensions(),
        values: batch.vectors,
    })
}

/// Reads a whole `.ivecs` file as neighbour ids.
pub fn read_neighbors(path: &Path) -> Result<Matrix<i64>> {
    let (file, shape) = shape(path, Element::I32)?;
    let mut bytes = Vec::with_capacity((shape.rows * shape.row_bytes()) as usize);
    BufReader::new(file)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    let mut values = Vec::with_capacity(shape.rows as usize * shape.width);
    for (r, row) in bytes.chunks_exact(shape.row_bytes() as usize).enumerate() {
        let announced = i32::from_le_bytes([row[0], row[1], row[2], row[3]]);
        if announced as usize != shape.width {
            return Err(fail(
                path,
                Problem::Corrupt(format!(
                    "row {r} announces {announced} values, the first {}",
                    shape.width
                )),
            ));
        }
        values.extend(
            row[4..]
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        );
    }
    Ok(Matrix {
        width: shape.width,
        values,
    })
}
