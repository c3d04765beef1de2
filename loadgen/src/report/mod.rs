//! What a run meant, as people and programs read it: [`text`] (the report on a terminal),
//! [`html`] (one self-contained page with charts), [`progress`] (the live line while it
//! runs) and [`merge`] (the reports of a distributed run combined into one).

pub mod html;
pub mod merge;
pub mod progress;
pub mod text;
