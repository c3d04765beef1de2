//! The graph's file format: a versioned little-endian layout of our own, checked with a
//! CRC-32 and validated field by field.
//!
//! The file format, version 1, all little-endian:
//!
//! ```text
//! magic "VRHNSW\0\0" | version u32 | dimensions u32 | metric u8 | M u32 | ef_construction u32
//! rows u64 | entry u32 (u32::MAX when empty) | max_level u32
//! per row:  id u64 | level u8 | removed u8
//! per row:  level-0 count u32 | that many rows u32
//! per row, per level 1..=level: count u32 | that many rows u32
//! per row:  dimensions f32 (the stored vector: normalised for cosine)
//! CRC-32 (IEEE) of everything before it, u32
//! ```

use std::path::Path;

use super::nodes::{Graph, MAX_CONNECTIVITY, MAX_LEVEL, NONE};
use super::slab::to_f16;
use crate::index::{IndexError, Metric};

const MAGIC: &[u8; 8] = b"VRHNSW\0\0";
const VERSION: u32 = 1;

fn metric_code(metric: Metric) -> u8 {
    match metric {
        Metric::Cosine => 0,
        Metric::L2 => 1,
        Metric::Ip => 2,
    }
}

pub(super) fn encode(graph: &Graph) -> Vec<u8> {
    let rows = graph.ids.len();
    let mut out = Vec::with_capacity(64 + rows * (14 + 4 * (graph.dimensions + 2 * graph.m)));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(graph.dimensions as u32).to_le_bytes());
    out.push(metric_code(graph.metric));
    out.extend_from_slice(&(graph.m as u32).to_le_bytes());
    out.extend_from_slice(&(graph.ef_construction as u32).to_le_bytes());
    out.extend_from_slice(&(rows as u64).to_le_bytes());
    out.extend_from_slice(&graph.entry.to_le_bytes());
    out.extend_from_slice(&(graph.max_level as u32).to_le_bytes());
    for row in 0..rows {
        out.extend_from_slice(&graph.ids[row].to_le_bytes());
        out.push(graph.levels[row]);
        out.push(u8::from(graph.removed[row]));
    }
    for row in 0..rows as u32 {
        for level in 0..=graph.levels[row as usize] as usize {
            let links = graph.links(row, level);
            out.extend_from_slice(&(links.len() as u32).to_le_bytes());
            for n in links {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }
    for row in 0..rows as u32 {
        for x in graph.vectors.get(row) {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads fields off the front of a byte slice; running out is an error, not a panic.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err("truncated".into());
        };
        self.bytes = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn f32(&mut self) -> Result<f32, String> {
        Ok(f32::from_le_bytes(self.take()?))
    }
}

pub(super) fn decode(bytes: &[u8], dimensions: usize, metric: Metric) -> Result<Graph, String> {
    let mut r = Reader { bytes };
    if r.take::<8>().ok().as_ref() != Some(MAGIC) {
        return Err("not a vecrig HNSW graph file (bad magic)".into());
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!(
            "format version {version}, this build reads version {VERSION}"
        ));
    }
    let width = r.u32()? as usize;
    if width != dimensions {
        return Err(format!(
            "written for {width} dimensions, the index has {dimensions}"
        ));
    }
    let code = r.u8()?;
    if code != metric_code(metric) {
        let written = [Metric::Cosine, Metric::L2, Metric::Ip]
            .into_iter()
            .find(|m| metric_code(*m) == code)
            .map_or_else(|| format!("unknown metric code {code}"), |m| m.to_string());
        return Err(format!(
            "written for metric {written}, the index uses {metric}"
        ));
    }
    // Everything above is checked before the CRC so that a file of another shape is
    // named as such; from here on, a mismatch means damage.
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err("truncated".into());
    };
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err("checksum mismatch: the file is truncated or corrupt".into());
    }
    let mut r = Reader {
        bytes: &body[8 + 4 + 4 + 1..],
    };
    let m = r.u32()? as usize;
    if !(2..=MAX_CONNECTIVITY).contains(&m) {
        return Err(format!("connectivity {m} out of range"));
    }
    let ef_construction = r.u32()? as usize;
    let rows = r.u64()?;
    // Each row needs at least its id, level, flags, level-0 count and vector: refuse a
    // count the file cannot hold before allocating for it.
    let least = 8 + 1 + 1 + 4 + 4 * dimensions as u64;
    if rows >= u64::from(NONE) || rows.saturating_mul(least) > body.len() as u64 {
        return Err(format!("{rows} slots do not fit in the file"));
    }
    let rows = rows as usize;
    let entry = r.u32()?;
    let max_level = r.u32()? as usize;
    let mut graph = Graph::new(dimensions, metric, m, ef_construction.max(1));
    graph.ids.reserve(rows);
    graph.levels.reserve(rows);
    graph.removed.reserve(rows);
    for _ in 0..rows {
        let id = r.u64()?;
        let level = r.u8()?;
        if level as usize > MAX_LEVEL {
            return Err(format!("level {level} above {MAX_LEVEL}"));
        }
        let removed = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(format!("bad removed flag {other}")),
        };
        graph.ids.push(id);
        graph.levels.push(level);
        graph.removed.push(removed);
        if removed {
            graph.tombstones += 1;
            graph.free.push((graph.ids.len() - 1) as u32);
        } else if graph
            .rows
            .insert(id, (graph.ids.len() - 1) as u32)
            .is_some()
        {
            return Err(format!("id {id} is live in two slots"));
        }
    }
    if rows == 0 {
        if entry != NONE {
            return Err("an empty graph with an entry point".into());
        }
    } else if entry as usize >= rows || graph.levels[entry as usize] as usize != max_level {
        return Err("entry point is not a slot of the top level".into());
    }
    graph.entry = entry;
    graph.max_level = if rows == 0 { 0 } else { max_level };
    graph.grow_links0(rows);
    graph.links0.resize(rows * graph.block0(), 0);
    graph.upper.reserve(rows);
    let mut list = Vec::with_capacity(2 * m);
    for row in 0..rows as u32 {
        let level = graph.levels[row as usize] as usize;
        graph.upper.push(vec![0; level * graph.block_upper()]);
        for l in 0..=level {
            let count = r.u32()? as usize;
            if count > graph.capacity(l) {
                return Err(format!("slot {row} has {count} links on level {l}"));
            }
            list.clear();
            for _ in 0..count {
                let n = r.u32()?;
                if n as usize >= rows || (graph.levels[n as usize] as usize) < l {
                    return Err(format!("slot {row} links to {n}, not a node of level {l}"));
                }
                list.push(n);
            }
            graph.set_links(row, l, &list);
        }
    }
    if r.bytes.len() != rows * dimensions * 4 {
        return Err("vector section has the wrong length".into());
    }
    let mut vector = vec![0.0f32; dimensions];
    for _ in 0..rows {
        for x in vector.iter_mut() {
            *x = r.f32()?;
        }
        graph.vectors.push(&vector);
        graph.coarse.push(&to_f16(&vector));
    }
    Ok(graph)
}

/// Whether the file at `path` is one of ours (begins with our magic). usearch's files have
/// no magic at their start (its header follows the vectors), so this is how the two are told
/// apart (see [`crate::index::open::load`]).
pub fn is_graph_file(path: &Path) -> Result<bool, IndexError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(MAGIC.len());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAGIC.len() as u64).read_to_end(&mut head))
        .map_err(|source| IndexError::Io {
            path: path.display().to_string(),
            source,
        })?;
    Ok(head == MAGIC)
}
