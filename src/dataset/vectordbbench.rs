//! VectorDBBench's parquet files: `train.parquet` (or shards `train-*.parquet`, or
//! `shuffle_train*.parquet`) with columns `id` and `emb` (a list of floats), `test.parquet` with
//! `id` and `emb`, `neighbors.parquet` with `id` and `neighbors_id` (a list of ids).
//!
//! Read with the `parquet` crate's record reader, which needs no Arrow: rows are decoded one
//! row group at a time, so a train set larger than memory is streamed.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};

use crate::dataset::error::{Problem, Result};
use crate::dataset::rows::{Batch, Matrix, PointReader, corrupt, fail, io};

fn open(path: &Path) -> Result<SerializedFileReader<File>> {
    let file = File::open(path).map_err(io(path))?;
    SerializedFileReader::new(file).map_err(|e| corrupt(path, e))
}

/// The vector column: `emb`, else the first list column.
fn vector_of(row: &Row) -> Option<&parquet::record::List> {
    let mut first = None;
    for (name, field) in row.get_column_iter() {
        if let Field::ListInternal(list) = field {
            if name == "emb" {
                return Some(list);
            }
            first.get_or_insert(list);
        }
    }
    first
}

fn id_of(row: &Row) -> Option<i64> {
    row.get_column_iter()
        .find_map(|(name, field)| match (name.as_str(), field) {
            ("id", Field::Long(v)) => Some(*v),
            ("id", Field::Int(v)) => Some(i64::from(*v)),
            _ => None,
        })
}

fn push_floats(path: &Path, list: &parquet::record::List, out: &mut Vec<f32>) -> Result<()> {
    for value in list.elements() {
        out.push(match value {
            Field::Float(v) => *v,
            Field::Double(v) => *v as f32,
            Field::Int(v) => *v as f32,
            Field::Long(v) => *v as f32,
            other => return Err(corrupt(path, format!("vector element {other}"))),
        });
    }
    Ok(())
}

/// The train files of a VectorDBBench directory, in name order.
pub fn train_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.starts_with("train") || name.starts_with("shuffle_train"))
                && name.ends_with(".parquet")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Streams the points of one or more parquet files, in order; ids from the `id` column, else
/// row numbers.
pub struct Points {
    files: Vec<PathBuf>,
    current: usize,
    rows: Option<parquet::record::reader::RowIter<'static>>,
    len: u64,
    dimensions: usize,
    next: u64,
}

impl Points {
    /// Opens `files`, reading their row counts and the first vector's width.
    pub fn open(files: Vec<PathBuf>) -> Result<Self> {
        let mut len = 0;
        let mut dimensions = 0;
        for path in &files {
            let reader = open(path)?;
            len += reader.metadata().file_metadata().num_rows().max(0) as u64;
            if dimensions == 0
                && let Some(row) = reader
                    .get_row_iter(None)
                    .map_err(|e| corrupt(path, e))?
                    .next()
            {
                let row = row.map_err(|e| corrupt(path, e))?;
                dimensions = vector_of(&row)
                    .ok_or_else(|| corrupt(path, "no list column (expected emb)"))?
                    .len();
            }
        }
        Ok(Self {
            files,
            current: 0,
            rows: None,
            len,
            dimensions,
            next: 0,
        })
    }
}

impl PointReader for Points {
    fn len(&self) -> u64 {
        self.len
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn next_batch(&mut self, max: usize, batch: &mut Batch) -> Result<()> {
        batch.ids.clear();
        batch.vectors.clear();
        while batch.ids.len() < max && self.current < self.files.len() {
            let path = &self.files[self.current];
            let rows = match &mut self.rows {
                Some(rows) => rows,
                None => self.rows.insert(open(path)?.into_iter()),
            };
            let Some(row) = rows.next() else {
                self.rows = None;
                self.current += 1;
                continue;
            };
            let row = row.map_err(|e| corrupt(path, e))?;
            let list = vector_of(&row).ok_or_else(|| corrupt(path, "row without a vector"))?;
            if list.len() != self.dimensions {
                return Err(fail(
                    path,
                    Problem::DimensionMismatch {
                        what: "a train point",
                        expected: self.dimensions,
                        got: list.len(),
                    },
                ));
            }
            push_floats(path, list, &mut batch.vectors)?;
            batch
                .ids
                .push(id_of(&row).map_or(self.next, |id| id.max(0) as u64));
            self.next += 1;
        }
        Ok(())
    }
}

/// Reads a whole `test.parquet` as queries.
pub fn read_queries(path: &Path) -> Result<Matrix<f32>> {
    let mut points = Points::open(vec![path.to_path_buf()])?;
    let mut batch = Batch::default();
    points.next_batch(usize::MAX, &mut batch)?;
    Ok(Matrix {
        width: points.dimensions(),
        values: batch.vectors,
    })
}

/// Reads a whole `neighbors.parquet` as neighbour ids (the `neighbors_id` list column, else
/// the first list column), one row per query.
pub fn read_neighbors(path: &Path) -> Result<Matrix<i64>> {
    let mut width = None;
    let mut values = Vec::new();
    for row in open(path)?.into_iter() {
        let row = row.map_err(|e| corrupt(path, e))?;
        let mut list = None;
        for (name, field) in row.get_column_iter() {
            if let Field::ListInternal(l) = field
                && (name == "neighbors_id" || list.is_none())
            {
                list = Some(l);
            }
        }
        let list = list.ok_or_else(|| corrupt(path, "no list column (expected neighbors_id)"))?;
        let w = *width.get_or_insert(list.len());
        if list.len() != w {
            return Err(corrupt(
                path,
                format!("rows of {} and of {w} neighbours", list.len()),
            ));
        }
        for value in list.elements() {
            values.push(match value {
                Field::Long(v) => *v,
                Field::Int(v) => i64::from(*v),
                other => return Err(corrupt(path, format!("neighbour id {other}"))),
            });
        }
    }
    Ok(Matrix {
        width: width.unwrap_or(0),
        values,
    })
}
