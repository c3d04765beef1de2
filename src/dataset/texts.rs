//! Query texts for the text workloads: one per line of a text file, or a string column of a
//! parquet file (`text`, `query` or `question`, else the first string column).

use std::path::Path;

use parquet::file::reader::SerializedFileReader;
use parquet::record::Field;

use crate::dataset::error::{Problem, Result};
use crate::dataset::rows::{fail, io};

const COLUMNS: [&str; 3] = ["text", "query", "question"];

/// The texts of `path`, in order; empty lines are skipped. Fails on a file with none.
pub fn read(path: &Path) -> Result<Vec<String>> {
    let is_parquet = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let texts = if is_parquet {
        from_parquet(path)?
    } else {
        std::fs::read_to_string(path)
            .map_err(io(path))?
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    if texts.is_empty() {
        return Err(fail(path, Problem::Missing("query text")));
    }
    Ok(texts)
}

fn from_parquet(path: &Path) -> Result<Vec<String>> {
    let corrupt = |e: &dyn std::fmt::Display| fail(path, Problem::Corrupt(e.to_string()));
    let file = std::fs::File::open(path).map_err(io(path))?;
    let reader = SerializedFileReader::new(file).map_err(|e| corrupt(&e))?;
    let mut texts = Vec::new();
    for row in reader {
        let row = row.map_err(|e| corrupt(&e))?;
        let mut chosen: Option<(usize, &String)> = None;
        for (name, field) in row.get_column_iter() {
            if let Field::Str(text) = field {
                let rank = COLUMNS
                    .iter()
                    .position(|c| c == name)
                    .unwrap_or(COLUMNS.len());
                if chosen.is_none_or(|(best, _)| rank < best) {
                    chosen = Some((rank, text));
                }
            }
        }
        let (_, text) = chosen.ok_or_else(|| corrupt(&"no string column"))?;
        texts.push(text.clone());
    }
    Ok(texts)
}
