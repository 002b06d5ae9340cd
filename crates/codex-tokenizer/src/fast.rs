//! A fast encoder for the byte-level BPE tokenizers of the GPT-2 family, with ids identical to
//! the `tokenizers` crate (and so to Python `tokenizers`) on every input.
//!
//! The HF pipeline builds a `NormalizedString` per document, runs the GPT-2 split regex through
//! Oniguruma, allocates a `String` per pre-token for the byte-to-char mapping, and then looks up
//! pairs of `String`-keyed symbols. For the common configuration — byte-level pre-tokenizer with
//! the GPT-2 pattern, a BPE model without dropout or subword affixes, no padding/truncation —
//! [`FastBpe`] does the same work directly on bytes:
//! - the GPT-2 pattern is a hand-written scanner over `char`s (its alternatives in order, with
//!   the `\s+(?!\S)` backtrack), ASCII classified by table, other characters by the `regex`
//!   crate's Unicode tables (memoized per thread);
//! - each pre-token's bytes are mapped to the vocabulary ids of their byte-level characters and
//!   merged by the same priority-queue algorithm as `tokenizers` (`Word::merge_all`: lowest rank
//!   first, leftmost on ties, stale entries checked the same way) — so even merge lists where two
//!   pairs produce one token give the same ids;
//! - merged words are cached per thread.
//!
//! Anything outside that configuration is not taken over: [`FastBpe::new`] returns `None`, and a
//! document that contains an added token's text (a special token such as `<|endoftext|>`) is
//! encoded by `tokenizers` itself ([`Encoder::encode_into`] falls back). The regex crate's Unicode
//! tables may lag or lead Oniguruma's by a Unicode version for newly assigned letters; the
//! parity tests below compare against `tokenizers` on random Unicode text.

use foldhash::HashMap;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use tokenizers::Tokenizer;

/// Words longer than this (bytes) are merged but not cached, as `tokenizers` does.
const MAX_CACHED_WORD: usize = 256;
/// Cached words per thread before the cache is cleared.
const CACHE_CAPACITY: usize = 1 << 16;
/// Documents longer than this (bytes) are cut into pieces merged in parallel.
const PARALLEL_ABOVE: usize = 1 << 20;
/// Approximate bytes per parallel piece.
const PARALLEL_PIECE: usize = 1 << 18;

/// Which Unicode normalization runs before pre-tokenization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Norm {
    None,
    Nfc,
    Nfkc,
}

/// The byte-level BPE encoder (see the module docs).
pub struct FastBpe {
    /// Vocabulary id of each byte's byte-level character.
    byte_ids: [u32; 256],
    /// `(left, right)` → `(rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Whole words looked up before merging (`ignore_merges`), keyed by their bytes.
    whole_words: Option<HashMap<Box<[u8]>, u32>>,
    norm: Norm,
    /// Texts of the added tokens: a document containing one is left to `tokenizers`.
    added: Option<aho_corasick::AhoCorasick>,
    /// Distinguishes this encoder's entries in the per-thread cache.
    id: usize,
}

/// The GPT-2 byte → character mapping (`bytes_to_unicode` in GPT-2's encoder.py).
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        out[b as usize] = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    out
}

impl FastBpe {
    /// The fast encoder for `tokenizer`, or `None` when its configuration is not the one this
    /// module reproduces exactly.
    pub fn new(tokenizer: &Tokenizer) -> Option<FastBpe> {
        if tokenizer.get_padding().is_some() || tokenizer.get_truncation().is_some() {
            return None;
        }
        let json: serde_json::Value =
            serde_json::from_str(&tokenizer.to_string(false).ok()?).ok()?;
        let norm = match &json["normalizer"] {
            serde_json::Value::Null => Norm::None,
            n if n["type"] == "NFKC" => Norm::Nfkc,
            n if n["type"] == "NFC" => Norm::Nfc,
            _ => return None,
        };
        let pre = &json["pre_tokenizer"];
        let byte_level = pre["type"] == "ByteLevel"
            && pre["add_prefix_space"] == false
            && pre["use_regex"] != false;
        if !byte_level {
            return None;
        }
        match &json["post_processor"] {
            serde_json::Value::Null => {}
            p if p["type"] == "ByteLevel" => {}
            _ => return None,
        }
        let model = &json["model"];
        let empty = |v: &serde_json::Value| v.is_null() || v == "";
        if model["type"] != "BPE"
            || !(model["dropout"].is_null() || model["dropout"] == 0.0)
            || !empty(&model["continuing_subword_prefix"])
            || !empty(&model["end_of_word_suffix"])
            || model["byte_fallback"] == true
        {
            return None;
        }
        let vocab = model["vocab"].as_object()?;
        let chars = byte_chars();
        let char_byte: HashMap<char, u8> = (0..=255u8).map(|b| (chars[b as usize], b)).collect();
        // Token text → bytes (None for a token with a character outside the byte alphabet,
        // which byte-level pre-tokenization can never produce).
        let token_bytes = |t: &str| -> Option<Vec<u8>> {
            t.chars().map(|c| char_byte.get(&c).copied()).collect()
        };
        let mut ids: HashMap<&str, u32> = HashMap::default();
        for (tok, id) in vocab {
            ids.insert(tok.as_str(), u32::try_from(id.as_u64()?).ok()?);
        }
        let mut byte_ids = [0u32; 256];
        for b in 0..256 {
            // A byte without a token would be an unknown token in `tokenizers`: not ours.
            byte_ids[b] = *ids.get(chars[b].to_string().as_str())?;
        }
        let mut merges = HashMap::default();
        for (rank, m) in model["merges"].as_array()?.iter().enumerate() {
            let (a, b) = match m {
                serde_json::Value::Array(p) if p.len() == 2 => (p[0].as_str()?, p[1].as_str()?),
                serde_json::Value::String(s) => s.split_once(' ')?,
                _ => return None,
            };
            let (ia, ib) = (*ids.get(a)?, *ids.get(b)?);
            let merged = *ids.get(format!("{a}{b}").as_str())?;
            merges
                .entry((ia, ib))
                .or_insert((u32::try_from(rank).ok()?, merged));
        }
        let whole_words = if model["ignore_merges"] == true {
            Some(
                vocab
                    .iter()
                    .filter_map(|(t, id)| {
                        Some((token_bytes(t)?.into_boxed_slice(), id.as_u64()? as u32))
                    })
                    .collect(),
            )
        } else {
            None
        };
        let added: Vec<String> = json["added_tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["content"].as_str())
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let added = if added.is_empty() {
            None
        } else {
            Some(aho_corasick::AhoCorasick::new(&added).ok()?)
        };
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        Some(FastBpe {
            byte_ids,
            merges,
            whole_words,
            norm,
            added,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Appends the ids of `text` to `out`, or returns `false` (appending nothing) when the text
    /// contains an added token's text and must go through `tokenizers`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) -> bool {
        if let Some(added) = &self.added
            && added.is_match(text)
        {
            return false;
        }
        let normalized;
        let text = match self.norm {
            _ if text.is_ascii() => text,
            Norm::None => text,
            Norm::Nfc | Norm::Nfkc => {
                use unicode_normalization_alignments::UnicodeNormalization;
                normalized = if self.norm == Norm::Nfc {
                    text.nfc().map(|(c, _)| c).collect::<String>()
                } else {
                    text.nfkc().map(|(c, _)| c).collect::<String>()
                };
                // A normalized added token (e.g. a full-width form) must be split out too.
                if let Some(added) = &self.added
                    && added.is_match(&normalized)
                {
                    return false;
                }
                normalized.as_str()
            }
        };
        if text.len() <= PARALLEL_ABOVE {
            self.encode_pretokens(text, out);
            return true;
        }
        // A large document: cut it at pre-token boundaries (the scan is cheap next to BPE) and
        // merge the pieces in parallel. Ids are a concatenation over pre-tokens, so the result
        // is the same as one sequential pass.
        let mut cuts = vec![0];
        let mut at = 0;
        let mut last_cut = 0;
        while at < text.len() {
            at = next_pretoken(text, at);
            if at - last_cut >= PARALLEL_PIECE {
                cuts.push(at);
                last_cut = at;
            }
        }
        if *cuts.last().unwrap_or(&0) != text.len() {
            cuts.push(text.len());
        }
        use rayon::prelude::*;
        let pieces: Vec<Vec<u32>> = cuts
            .par_windows(2)
            .map(|w| {
                let mut ids = Vec::with_capacity((w[1] - w[0]) / 3);
                self.encode_pretokens(&text[w[0]..w[1]], &mut ids);
                ids
            })
            .collect();
        out.reserve(pieces.iter().map(Vec::len).sum());
        for p in pieces {
            out.extend_from_slice(&p);
        }
        true
    }

    /// Pre-tokenizes `text` (already normalized) and merges each pre-token.
    fn encode_pretokens(&self, text: &str, out: &mut Vec<u32>) {
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.owner != self.id {
                cache.owner = self.id;
                cache.words.clear();
            }
            let mut start = 0;
            while start < text.len() {
                let end = next_pretoken(text, start);
                self.encode_word(&text.as_bytes()[start..end], &mut cache, out);
                start = end;
            }
        });
    }

    fn encode_word(&self, word: &[u8], cache: &mut WordCache, out: &mut Vec<u32>) {
        if let Some(whole) = &self.whole_words
            && let Some(&id) = whole.get(word)
        {
            out.push(id);
            return;
        }
        if let Some(ids) = cache.words.get(word) {
            out.extend_from_slice(ids);
            return;
        }
        let before = out.len();
        self.merge(word, out);
        if word.len() < MAX_CACHED_WORD {
            if cache.words.len() >= CACHE_CAPACITY {
                cache.words.clear();
            }
            cache.words.insert(word.into(), out[before..].into());
        }
    }

    /// `tokenizers`' `Word::merge_all` without dropout, on byte ids.
    fn merge(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.len() == 1 {
            out.push(self.byte_ids[word[0] as usize]);
            return;
        }
        let mut sym: Vec<Symbol> = word
            .iter()
            .enumerate()
            .map(|(i, &b)| Symbol {
                c: self.byte_ids[b as usize],
                prev: i as isize - 1,
                next: if i + 1 < word.len() {
                    i as isize + 1
                } else {
                    -1
                },
                removed: false,
            })
            .collect();
        let mut queue: BinaryHeap<Merge> = sym
            .windows(2)
            .enumerate()
            .filter_map(|(pos, w)| {
                self.merges
                    .get(&(w[0].c, w[1].c))
                    .map(|&(rank, new_id)| Merge { pos, rank, new_id })
            })
            .collect();
        while let Some(top) = queue.pop() {
            if sym[top.pos].removed || sym[top.pos].next == -1 {
                continue;
            }
            let next_pos = sym[top.pos].next as usize;
            let right = sym[next_pos];
            // An expired entry: the pair at `pos` changed since it was queued.
            if self
                .merges
                .get(&(sym[top.pos].c, right.c))
                .is_none_or(|&(_, id)| id != top.new_id)
            {
                continue;
            }
            sym[top.pos].c = top.new_id;
            sym[top.pos].next = right.next;
            sym[next_pos].removed = true;
            if right.next >= 0 {
                sym[right.next as usize].prev = top.pos as isize;
            }
            let cur = sym[top.pos];
            if cur.prev >= 0 {
                let prev = cur.prev as usize;
                if let Some(&(rank, new_id)) = self.merges.get(&(sym[prev].c, cur.c)) {
                    queue.push(Merge {
                        pos: prev,
                        rank,
                        new_id,
                    });
                }
            }
            if cur.next >= 0 {
                let next = cur.next as usize;
                if let Some(&(rank, new_id)) = self.merges.get(&(cur.c, sym[next].c)) {
                    queue.push(Merge {
                        pos: top.pos,
                        rank,
                        new_id,
                    });
                }
            }
        }
        out.extend(sym.iter().filter(|s| !s.removed).map(|s| s.c));
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    c: u32,
    prev: isize,
    next: isize,
    removed: bool,
}

/// A queued merge; the heap pops the lowest rank, then the leftmost position.
#[derive(PartialEq, Eq)]
struct Merge {
    pos: usize,
    rank: u32,
    new_id: u32,
}

impl Ord for Merge {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.pos.cmp(&self.pos))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Default)]
struct WordCache {
    owner: usize,
    words: HashMap<Box<[u8]>, Box<[u32]>>,
}

thread_local! {
    static CACHE: RefCell<WordCache> = RefCell::new(WordCache {
        owner: usize::MAX,
        words: HashMap::default(),
    });
    /// Non-ASCII characters classified so far (the regex crate's tables are not a cheap lookup).
    static CLASSES: RefCell<HashMap<char, Class>> = RefCell::new(HashMap::default());
}

/// The character classes of the GPT-2 pattern.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Space,
    Letter,
    Number,
    Other,
}

fn class(c: char) -> Class {
    if c.is_ascii() {
        return match c as u8 {
            b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
            b'0'..=b'9' => Class::Number,
            b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => Class::Space,
            _ => Class::Other,
        };
    }
    // Oniguruma's `\s` is the White_Space property, as is `char::is_whitespace`; `\p{N}` is
    // Nd|Nl|No, as is `char::is_numeric`; `\p{L}` has no std equivalent (`is_alphabetic` also
    // takes Nl and combining marks), so it comes from the regex crate's tables.
    if c.is_whitespace() {
        return Class::Space;
    }
    if c.is_numeric() {
        return Class::Number;
    }
    CLASSES.with(|m| {
        *m.borrow_mut().entry(c).or_insert_with(|| {
            static LETTER: std::sync::LazyLock<regex::Regex> =
                std::sync::LazyLock::new(|| regex::Regex::new(r"^\p{L}$").expect("valid regex"));
            let mut buf = [0u8; 4];
            if LETTER.is_match(c.encode_utf8(&mut buf)) {
                Class::Letter
            } else {
                Class::Other
            }
        })
    })
}

/// End (byte index) of the pre-token starting at `i` under the GPT-2 pattern
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn next_pretoken(s: &str, i: usize) -> usize {
    let bytes = s.as_bytes();
    let char_at = |j: usize| s[j..].chars().next();
    let c = char_at(i).unwrap_or(' ');
    if c == '\'' {
        let rest = &bytes[i + 1..];
        match rest {
            [b's' | b't' | b'm' | b'd', ..] => return i + 2,
            [b'r', b'e', ..] | [b'v', b'e', ..] | [b'l', b'l', ..] => return i + 3,
            _ => {}
        }
    }
    // ` ?X+` for X in letters, numbers, others: an optional space, then a run of one class.
    let (k, first) = if c == ' ' {
        match char_at(i + 1) {
            Some(n) => (i + 1, n),
            None => (i, c),
        }
    } else {
        (i, c)
    };
    let cls = class(first);
    if cls != Class::Space {
        let mut j = k;
        for ch in s[k..].chars() {
            if class(ch) != cls {
                break;
            }
            j += ch.len_utf8();
        }
        return j;
    }
    // Whitespace at `i`: `\s+(?!\S)` takes the run, less its last character when a
    // non-space follows (that character then leads the next pre-token); a single space
    // before a non-space is `\s+`.
    let mut j = i;
    let mut last = i;
    for ch in s[i..].chars() {
        if class(ch) != Class::Space {
            break;
        }
        last = j;
        j += ch.len_utf8();
    }
    if j == s.len() || last == i { j } else { last }
}

/// A tokenizer with the fast path where it applies and `tokenizers` everywhere else: the one
/// place the fallback is written (`codex tokenizer encode` and `codex train`'s data preparation
/// both encode through it).
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    fast: Option<FastBpe>,
}

impl<'a> Encoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Encoder<'a> {
        let fast = FastBpe::new(tokenizer);
        Encoder { tokenizer, fast }
    }

    /// Whether the fast byte-level BPE path is in use.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Appends the ids of `text` to `out`. The fast path applies only to tokenizers whose
    /// post-processor adds nothing ([`FastBpe::new`]), so `add_special_tokens` changes nothing
    /// there; `tokenizers` handles it everywhere else.
    pub fn encode_into(
        &self,
        text: &str,
        add_special_tokens: bool,
        out: &mut Vec<u32>,
    ) -> tokenizers::Result<()> {
        if let Some(fast) = &self.fast
            && fast.encode_into(text, out)
        {
            return Ok(());
        }
        let enc = self.tokenizer.encode_fast(text, add_special_tokens)?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// A byte-level BPE trained here (GPT-2 pre-tokenizer) on `text`.
    fn trained(text: &str, vocab: usize) -> Tokenizer {
        let cfg = crate::TrainConfig {
            vocab_size: vocab,
            min_frequency: 1,
            special_tokens: vec![],
            normalization: crate::Normalization::None,
            ..crate::TrainConfig::default()
        };
        let docs = text.lines().map(|l| {
            Ok(crate::corpus::Document {
                text: l.to_string(),
                file: 0,
                line: 1,
            })
        });
        crate::train(&cfg, docs, &|_| {}).unwrap().tokenizer
    }

    fn random_text(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> String {
        // ASCII, spaces of every kind, contractions, letters and digits of other scripts,
        // combining marks, full-width forms (NFKC changes them), and emoji.
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "q",
            "0",
            "7",
            " ",
            "  ",
            "\t",
            "\n",
            "\r\n",
            "'s",
            "'re",
            "'ll",
            "'x",
            "'",
            "don't",
            "_",
            "(",
            ")",
            "{}",
            ".",
            "==",
            "é",
            "ß",
            "Ж",
            "中",
            "٣",
            "Ⅻ",
            "½",
            "\u{301}",
            "\u{a0}",
            "\u{2003}",
            "\u{3000}",
            "\u{85}",
            "\u{2028}",
            "Ａ",
            "ｶ",
            "🦀",
            "fn",
            "self",
            "def ",
            "    return x\n",
            "\u{fb01}",
            "\u{200b}",
        ];
        (0..n)
            .map(|_| PIECES[rng.random_range(0..PIECES.len())])
            .collect()
    }

    #[test]
    fn pretokens_follow_the_gpt2_pattern() {
        fn split(s: &str) -> Vec<&str> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < s.len() {
                let j = next_pretoken(s, i);
                out.push(&s[i..j]);
                i = j;
            }
            out
        }
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(split("don't  stop\n"), ["don", "'t", " ", " stop", "\n"]);
        assert_eq!(split("x   \ty"), ["x", "   ", "\t", "y"]);
        assert_eq!(split("a1 22.'s "), ["a", "1", " 22", ".'", "s", " "]);
        assert_eq!(split("  \n  a"), ["  \n ", " a"]);
    }

    /// Reference: the `tokenizers` crate's own encoding of the same text with the same file.
    #[test]
    fn ids_equal_tokenizers_on_random_unicode_text() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let corpus: String = (0..400).map(|_| random_text(&mut rng, 40) + "\n").collect();
        let mut tok = trained(&corpus, 600);
        for norm in [None, Some("NFKC"), Some("NFC")] {
            let mut json: serde_json::Value =
                serde_json::from_str(&tok.to_string(false).unwrap()).unwrap();
            json["normalizer"] = match norm {
                None => serde_json::Value::Null,
                Some(n) => serde_json::json!({ "type": n }),
            };
            tok = json.to_string().parse::<Tokenizer>().unwrap();
            let fast = FastBpe::new(&tok).expect("a byte-level BPE is taken over");
            for n in 0..300 {
                let text = random_text(&mut rng, n % 60);
                let want = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
                let mut got = Vec::new();
                if fast.encode_into(&text, &mut got) {
                    assert_eq!(got, want, "{norm:?} {text:?}");
                }
            }
        }
    }

    #[test]
    fn a_large_document_cut_in_parallel_pieces_gives_the_same_ids() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let corpus: String = (0..300).map(|_| random_text(&mut rng, 40) + "\n").collect();
        let tok = trained(&corpus, 500);
        let fast = FastBpe::new(&tok).unwrap();
        let mut big = String::new();
        while big.len() <= 3 * PARALLEL_ABOVE {
            big.push_str(&random_text(&mut rng, 200));
        }
        let want = tok.encode(big.as_str(), false).unwrap().get_ids().to_vec();
        let mut got = Vec::new();
        assert!(fast.encode_into(&big, &mut got));
        assert_eq!(got, want);
    }

    #[test]
    fn added_tokens_fall_back_and_other_configs_are_not_taken_over() {
        let mut tok = trained("hello world, hello there\n", 300);
        tok.add_special_tokens([tokenizers::AddedToken::from("<|x|>", true)])
            .unwrap();
        let special = tok.token_to_id("<|x|>").unwrap();
        let mut json: serde_json::Value =
            serde_json::from_str(&tok.to_string(false).unwrap()).unwrap();
        let enc = Encoder::new(&tok);
        assert!(enc.is_fast());
        let mut ids = Vec::new();
        enc.encode_into("hello<|x|>world", false, &mut ids).unwrap();
        let want = enc.tokenizer.encode("hello<|x|>world", false).unwrap();
        assert_eq!(ids, want.get_ids());
        assert!(ids.contains(&special));

        json["pre_tokenizer"] = serde_json::json!({ "type": "Whitespace" });
        let other: Tokenizer = json.to_string().parse().unwrap();
        assert!(FastBpe::new(&other).is_none());
    }
}
