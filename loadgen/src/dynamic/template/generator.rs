//! The generators a template names (`{{name}}`), and how a template string is read: a plain
//! literal, one generator alone (the field's whole value), or text with generators inside it.

/// The generators a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FieldGenerator {
    /// `{{vector}}`: the point's vector.
    Vector,
    /// `{{vector_f16}}`: the point's vector as IEEE half floats, little-endian.
    VectorF16,
    /// `{{vector_bf16}}`: the point's vector as bfloat16, little-endian.
    VectorBf16,
    /// `{{vectors}}`: every vector of the batch, one after another.
    Vectors,
    /// `{{vectors_f16}}`: every vector of the batch as IEEE half floats.
    VectorsF16,
    /// `{{vectors_bf16}}`: every vector of the batch as bfloat16.
    VectorsBf16,
    /// `{{text}}`.
    Text,
    /// `{{payload}}`.
    Payload,
    /// `{{id}}`.
    Id,
    /// `{{ids}}`: every id of the batch, in order.
    Ids,
    /// `{{batch_size}}`: the number of points of the request.
    BatchSize,
    /// `{{user}}`.
    User,
    /// `{{iteration}}`.
    Iteration,
    /// `{{k}}`.
    K,
    /// `{{stamp}}`.
    Stamp,
    /// `{{uuid}}`: the point's id as a UUID (its low 64 bits), for services whose keys must
    /// be UUIDs.
    Uuid,
    /// `{{pad}}`.
    Pad,
}

/// Every generator with its name, in the order errors list them.
const NAMED: [(&str, FieldGenerator); 17] = [
    ("vector", FieldGenerator::Vector),
    ("vector_f16", FieldGenerator::VectorF16),
    ("vector_bf16", FieldGenerator::VectorBf16),
    ("vectors", FieldGenerator::Vectors),
    ("vectors_f16", FieldGenerator::VectorsF16),
    ("vectors_bf16", FieldGenerator::VectorsBf16),
    ("text", FieldGenerator::Text),
    ("payload", FieldGenerator::Payload),
    ("id", FieldGenerator::Id),
    ("ids", FieldGenerator::Ids),
    ("batch_size", FieldGenerator::BatchSize),
    ("user", FieldGenerator::User),
    ("iteration", FieldGenerator::Iteration),
    ("k", FieldGenerator::K),
    ("stamp", FieldGenerator::Stamp),
    ("uuid", FieldGenerator::Uuid),
    ("pad", FieldGenerator::Pad),
];

/// How a vector generator writes its floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    /// 4 bytes each: a `float` field, or little-endian f32 in `bytes`.
    F32,
    /// 8 bytes each: a `double` field.
    F64,
    /// 2 bytes each, IEEE half, little-endian.
    F16,
    /// 2 bytes each, bfloat16, little-endian.
    Bf16,
}

impl Encoding {
    /// Bytes per value.
    pub(super) fn width(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F64 => 8,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// Appends `vector` to `out`, each value little-endian.
    pub(super) fn write(self, vector: &[f32], out: &mut Vec<u8>) {
        match self {
            Self::F32 => vector
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Self::F64 => vector
                .iter()
                .for_each(|&x| out.extend_from_slice(&f64::from(x).to_le_bytes())),
            Self::F16 => vector
                .iter()
                .for_each(|&x| out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes())),
            Self::Bf16 => vector
                .iter()
                .for_each(|&x| out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes())),
        }
    }
}

impl FieldGenerator {
    /// `{{name}}`.
    pub fn name(self) -> &'static str {
        NAMED
            .iter()
            .find(|(_, g)| *g == self)
            .map_or("?", |(name, _)| name)
    }

    /// A vector generator's encoding in bytes, and whether it writes every point's vector
    /// (`None`: not a vector generator). `{{vector}}` and `{{vectors}}` write f32 here; in a
    /// `double` field they write f64 (see [`Self::encoding_in`]).
    pub(super) fn vector(self) -> Option<(Encoding, bool)> {
        Some(match self {
            Self::Vector => (Encoding::F32, false),
            Self::VectorF16 => (Encoding::F16, false),
            Self::VectorBf16 => (Encoding::Bf16, false),
            Self::Vectors => (Encoding::F32, true),
            Self::VectorsF16 => (Encoding::F16, true),
            Self::VectorsBf16 => (Encoding::Bf16, true),
            _ => return None,
        })
    }

    /// A vector generator's encoding in a field of `kind` (a `double` field takes f64).
    pub(super) fn encoding_in(self, kind: &prost_reflect::Kind) -> Option<(Encoding, bool)> {
        let (encoding, all) = self.vector()?;
        Some(match kind {
            prost_reflect::Kind::Double => (Encoding::F64, all),
            _ => (encoding, all),
        })
    }

    /// Whether it generates a number (converted to the field's integer, float or string).
    pub(super) fn is_number(self) -> bool {
        matches!(
            self,
            Self::Id | Self::User | Self::Iteration | Self::K | Self::BatchSize
        )
    }

    /// Whether it may sit inside a longer string (a number, or the stamp).
    pub(super) fn interpolates(self) -> bool {
        self.is_number() || self == Self::Stamp
    }
}

/// `id` as a UUID: its low 64 bits, the rest zero (what [`crate::dynamic::IdsPath`] reads
/// back from a UUID, as text or as 16 bytes).
pub(super) fn uuid(id: u64) -> String {
    format!(
        "00000000-0000-0000-{:04x}-{:012x}",
        id >> 48,
        id & 0xffff_ffff_ffff
    )
}

/// A part of a string with generators inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Text(String),
    Generate(FieldGenerator),
}

/// What a template string holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Parsed {
    /// No generator: a literal.
    Plain,
    /// One generator and nothing else (blanks around it aside): the field's whole value.
    Whole(FieldGenerator),
    /// Text with generators inside it, in order.
    Pieces(Vec<Piece>),
}

impl Parsed {
    /// Whether it names `generator`.
    pub(super) fn mentions(&self, generator: FieldGenerator) -> bool {
        match self {
            Self::Plain => false,
            Self::Whole(g) => *g == generator,
            Self::Pieces(pieces) => pieces.contains(&Piece::Generate(generator)),
        }
    }
}

/// Reads a template string: an error for `{{` without `}}`, or a name that is no generator.
pub(super) fn parse(text: &str) -> Result<Parsed, String> {
    if !text.contains("{{") {
        return Ok(Parsed::Plain);
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("{text:?}: `{{{{` without its `}}}}`"));
        };
        let name = after[..end].trim();
        let Some(&(_, generator)) = NAMED.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "unknown generator {{{{{name}}}}}: expected one of {}",
                names.join(", ")
            ));
        };
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_string()));
        }
        pieces.push(Piece::Generate(generator));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    let mut generators = pieces.iter().filter_map(|p| match p {
        Piece::Generate(g) => Some(*g),
        Piece::Text(_) => None,
    });
    let blank = |p: &Piece| matches!(p, Piece::Text(t) if t.trim().is_empty());
    if let (Some(only), None) = (generators.next(), generators.next())
        && pieces
            .iter()
            .all(|p| blank(p) || matches!(p, Piece::Generate(_)))
    {
        return Ok(Parsed::Whole(only));
    }
    Ok(Parsed::Pieces(pieces))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_literals_whole_generators_or_text_with_generators_inside() {
        assert_eq!(parse("docs").expect("plain"), Parsed::Plain);
        assert_eq!(parse(r#"{"a": {"b": 1}}"#).expect("plain"), Parsed::Plain);
        assert_eq!(
            parse(" {{ k }} ").expect("whole"),
            Parsed::Whole(FieldGenerator::K)
        );
        assert_eq!(
            parse(r#"{"ef": {{k}}}"#).expect("pieces"),
            Parsed::Pieces(vec![
                Piece::Text(r#"{"ef": "#.into()),
                Piece::Generate(FieldGenerator::K),
                Piece::Text("}".into()),
            ])
        );
        assert_eq!(
            parse("{{user}}-{{iteration}}").expect("pieces"),
            Parsed::Pieces(vec![
                Piece::Generate(FieldGenerator::User),
                Piece::Text("-".into()),
                Piece::Generate(FieldGenerator::Iteration),
            ])
        );
        let e = parse("{{vectr}}").expect_err("unknown");
        assert!(e.contains("unknown generator {{vectr}}"), "{e}");
        let e = parse("{{k}").expect_err("unclosed");
        assert!(e.contains("without its"), "{e}");
        for (name, generator) in NAMED {
            assert_eq!(generator.name(), name);
            assert_eq!(
                parse(&format!("{{{{{name}}}}}")).expect("named"),
                Parsed::Whole(generator)
            );
        }
    }
}
