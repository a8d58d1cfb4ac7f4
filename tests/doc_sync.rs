//! Doc-sync: the documents checked against the code, so that neither can
//! drift from the other unnoticed.
//!
//! - PROTOCOL.md §6 ("Every status text") against the texts of
//!   `parlor_proto::text`: every constant is in the table byte for byte, every
//!   fixed text of the table is a constant, and every frame length the table
//!   states is the text's length plus the status byte.
//! - README.md's configuration table, and its example file, against
//!   `parlor_server::Config::defaults_toml()`: the same keys, with the same
//!   defaults.
//!
//! The documents are read when the test is built (`include_str!`), so a
//! change to either side that is not made to the other fails here.

use std::collections::{BTreeMap, BTreeSet};

use parlor_server::Config;

const PROTOCOL: &str = include_str!("../PROTOCOL.md");
const README: &str = include_str!("../README.md");
/// The source of `parlor_proto::text`, read only to check that [`TEXTS`]
/// names every constant the module has.
const TEXT_SOURCE: &str = include_str!("../crates/parlor-proto/src/text.rs");

/// `(name, value)` for each of the given `parlor_proto::text` constants.
macro_rules! texts {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), parlor_proto::text::$name)),*]
    };
}

/// Every constant of `parlor_proto::text`, as (name, text).
/// [`the_list_of_texts_here_names_every_constant_of_parlor_proto_text`] keeps
/// this list complete.
const TEXTS: [(&str, &str); 27] = texts![
    NICK_TAKEN,
    NICK_EMPTY,
    NICK_INVALID,
    ROOM_EMPTY,
    ROOM_INVALID,
    WRONG_PASSWORD,
    VOID,
    NICK_NOT_PRESENT,
    SERVER_FULL,
    TOO_MANY_FROM_ADDRESS,
    CLUSTER_UNAVAILABLE,
    TOO_MANY_ROOMS,
    PASSWORDS_BUSY,
    PASSWORD_FAILED,
    REQUEST_PENDING,
    BAD_PUBLIC_KEY,
    KEY_PROOF_FAILED,
    SIGNED_NICK_NEEDED,
    RESUME_PROOF_FAILED,
    KEY_ALREADY_REGISTERED,
    REGISTER_KEY_FIRST,
    DM_KEY_WITH_YOURSELF,
    KEYS_BUSY,
    KEY_WRAP_FAILED,
    SECURE_NEEDS_TLS_NO_PORT,
    FILE_TO_YOURSELF,
    FILE_NOT_SEALED,
];

/// The body of the markdown section whose heading line starts with
/// `heading`, up to the next heading of the same level.
fn section<'a>(document: &'a str, heading: &str) -> &'a str {
    let start = document
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("no heading starting with {heading:?}"))
        + 1;
    let body = &document[start..];
    let end = body[1..].find("\n## ").map_or(body.len(), |end| end + 1);
    &body[..end]
}

/// The cells of each row of the first markdown table in `text` whose
/// header row is `header`, trimmed; the header and `|---|` rows left out.
fn table_rows<'a>(text: &'a str, header: &str) -> Vec<Vec<&'a str>> {
    let mut lines = text.lines().skip_while(|line| line.trim() != header);
    assert!(lines.next().is_some(), "no table with header {header:?}");
    let separator = lines.next().unwrap_or_default();
    assert!(separator.starts_with("|---"), "{header:?} has no |---| row");
    let columns = header.matches('|').count() - 1;
    lines
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            assert_eq!(
                cells.len(),
                columns,
                "row {line:?} has the wrong cell count"
            );
            cells
        })
        .collect()
}

/// The text inside a cell that is exactly one code span, `` `like this` ``.
fn code_span(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

// ---------------------------------------------------------------------------
// PROTOCOL.md §6 and parlor_proto::text
// ---------------------------------------------------------------------------

/// One row of PROTOCOL.md §6.
#[derive(Debug)]
struct StatusRow<'a> {
    text: &'a str,
    when: &'a str,
    length: FrameLength<'a>,
}

/// The "frame length" column of §6: the reply's payload length, which is
/// the status byte plus the text.
#[derive(Clone, Copy, Debug, PartialEq)]
enum FrameLength<'a> {
    /// `` `2b` ``: a fixed length, in hex.
    Fixed(usize),
    /// `` `2d` with the defaults ``: the length of a parametrised text when
    /// its parameters are the configuration's defaults.
    WithDefaults(usize),
    /// `1 + 27 + room`: the status byte, the fixed part of the text, and
    /// the placeholder `<room>`.
    Plus { fixed: usize, placeholder: &'a str },
    /// `varies`.
    Varies,
}

impl<'a> FrameLength<'a> {
    fn parse(cell: &'a str) -> FrameLength<'a> {
        let hex = |digits: &str| {
            usize::from_str_radix(digits, 16)
                .unwrap_or_else(|_| panic!("frame length {cell:?} is not hex"))
        };
        if cell == "varies" {
            FrameLength::Varies
        } else if let Some(digits) = code_span(cell) {
            FrameLength::Fixed(hex(digits))
        } else if let Some(digits) = cell.strip_suffix(" with the defaults").and_then(code_span) {
            FrameLength::WithDefaults(hex(digits))
        } else if let Some(sum) = cell.strip_prefix("1 + ") {
            let (fixed, placeholder) = sum
                .split_once(" + ")
                .unwrap_or_else(|| panic!("frame length {cell:?} is not 1 + n + placeholder"));
            let fixed = fixed
                .parse()
                .unwrap_or_else(|_| panic!("frame length {cell:?}: {fixed:?} is not a number"));
            FrameLength::Plus { fixed, placeholder }
        } else {
            panic!("frame length {cell:?} is in no form this test knows");
        }
    }
}

/// The `<placeholder>`s of a text, in order.
fn placeholders(text: &str) -> Vec<&str> {
    text.split('<')
        .skip(1)
        .map(|rest| {
            let (name, _) = rest
                .split_once('>')
                .unwrap_or_else(|| panic!("unclosed placeholder in {text:?}"));
            name
        })
        .collect()
}

/// The text with its placeholders taken out: the part that is the same in
/// every reply.
fn without_placeholders(text: &str) -> String {
    let mut fixed = String::new();
    let mut rest = text;
    while let Some((before, after)) = rest.split_once('<') {
        fixed.push_str(before);
        rest = after.split_once('>').map_or("", |(_, after)| after);
    }
    fixed + rest
}

/// Every row of the status-text table of PROTOCOL.md §6.
fn status_rows() -> Vec<StatusRow<'static>> {
    let section = section(PROTOCOL, "## 6. Every status text");
    let rows = table_rows(section, "| status | text | when | frame length |");
    assert!(!rows.is_empty(), "§6 has no status texts");
    rows.into_iter()
        .map(|cells| {
            assert!(
                matches!(cells[0], "`01`" | "`02`"),
                "§6 row {cells:?}: the status is neither `01` nor `02`"
            );
            let text = code_span(cells[1])
                .unwrap_or_else(|| panic!("§6 row {cells:?}: the text is not one code span"));
            StatusRow {
                text,
                when: cells[2],
                length: FrameLength::parse(cells[3]),
            }
        })
        .collect()
}

/// The texts of §6, by count of rows that give them.
fn status_texts() -> BTreeMap<&'static str, usize> {
    let mut texts = BTreeMap::new();
    for row in status_rows() {
        *texts.entry(row.text).or_default() += 1;
    }
    texts
}

#[test]
fn the_list_of_texts_here_names_every_constant_of_parlor_proto_text() {
    let in_source: BTreeSet<&str> = TEXT_SOURCE
        .split("\npub const ")
        .skip(1)
        .map(|rest| rest.split(':').next().unwrap().trim())
        .collect();
    let here: BTreeSet<&str> = TEXTS.iter().map(|(name, _)| *name).collect();
    assert_eq!(here.len(), TEXTS.len(), "a constant is listed twice");
    assert_eq!(
        here, in_source,
        "TEXTS in tests/doc_sync.rs must list every constant of parlor_proto::text"
    );
}

#[test]
fn every_text_constant_appears_exactly_once_in_protocol_section_6() {
    let documented = status_texts();
    for (name, text) in TEXTS {
        match documented.get(text) {
            Some(1) => {}
            Some(rows) => panic!("text::{name} ({text:?}) is in {rows} rows of PROTOCOL.md §6"),
            None => panic!("text::{name} ({text:?}) is missing from PROTOCOL.md §6"),
        }
    }
}

/// The other direction. Texts with a `<placeholder>` are built inline by
/// the hub (the rate limits, a full room, the room you are already in, a
/// malformed frame, ...), not kept in `parlor_proto::text`, so they are
/// skipped here; the frame-length test still checks their stated lengths.
#[test]
fn every_fixed_text_in_protocol_section_6_is_a_text_constant() {
    let constants: BTreeSet<&str> = TEXTS.iter().map(|(_, text)| *text).collect();
    let stray: Vec<&str> = status_texts()
        .into_keys()
        .filter(|text| placeholders(text).is_empty() && !constants.contains(text))
        .collect();
    assert!(
        stray.is_empty(),
        "PROTOCOL.md §6 lists texts that are not in parlor_proto::text: {stray:#?}"
    );
}

/// §6 states each reply's payload length: in hex for a fixed text, as
/// `1 + n + placeholder` for one built around a name, and in hex "with the
/// defaults" for the rate-limit texts, whose `<N>` and `<W>` are then the
/// configuration's defaults (W printed as Rust prints an `f64`, as §6 says).
#[test]
fn every_frame_length_in_protocol_section_6_is_the_text_plus_the_status_byte() {
    let defaults = Config::default();
    let rate_limits = [
        (
            "messages",
            defaults.rate_limit_messages,
            defaults.rate_limit_window_secs,
        ),
        (
            "nick changes",
            defaults.nick_rate_limit,
            defaults.nick_rate_window_secs,
        ),
        (
            "password attempts",
            defaults.password_join_rate_limit,
            defaults.password_join_rate_window_secs,
        ),
    ];
    for row in status_rows() {
        let text = row.text;
        match row.length {
            FrameLength::Fixed(length) => {
                assert!(
                    placeholders(text).is_empty(),
                    "{row:?}: a fixed length for a template"
                );
                assert_eq!(length, 1 + text.len(), "{row:?}: frame length");
            }
            FrameLength::Plus { fixed, placeholder } => {
                assert_eq!(placeholders(text), [placeholder], "{row:?}: placeholder");
                assert_eq!(
                    fixed,
                    without_placeholders(text).len(),
                    "{row:?}: fixed part"
                );
            }
            FrameLength::WithDefaults(length) => {
                assert_eq!(placeholders(text), ["N", "W"], "{row:?}: placeholders");
                let (_, limit, secs) = rate_limits
                    .iter()
                    .find(|(what, ..)| text.ends_with(&format!(" {what} per <W> seconds.")))
                    .unwrap_or_else(|| panic!("{row:?}: no default for this rate limit"));
                let shown = text
                    .replace("<N>", &limit.to_string())
                    .replace("<W>", &secs.to_string());
                assert_eq!(length, 1 + shown.len(), "{row:?}: length of {shown:?}");
                // Where the row spells the default text out, it must be this.
                let literal = text.split('<').next().unwrap();
                for example in row.when.split('`').skip(1).step_by(2) {
                    if example.starts_with(literal) {
                        assert_eq!(example, shown, "{row:?}: the text with the defaults");
                    }
                }
            }
            FrameLength::Varies => {
                assert!(
                    !placeholders(text).is_empty(),
                    "{row:?}: a fixed text varies"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// README.md's configuration and Config::defaults_toml()
// ---------------------------------------------------------------------------

/// A configuration's keys: the ones set, with their values, and the ones
/// shown only as a comment (`# key = ...`), which are unset by default.
#[derive(Debug, PartialEq)]
struct Settings {
    set: BTreeMap<String, String>,
    unset: BTreeSet<String>,
}

/// A TOML value as text that is the same for two ways of writing one
/// default: strings without their quotes, and numbers as Rust prints them,
/// so that `30.0` and `30` are both `30` (`Display` for `f64` never uses an
/// exponent, and prints a whole float without a fraction).
fn normalise(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(number) => number.to_string(),
        toml::Value::Float(number) => number.to_string(),
        other => other.to_string(),
    }
}

/// A TOML file's settings: its table, plus the keys of its commented-out
/// `# key = value` lines.
fn settings_of_toml(file: &str) -> Settings {
    let table: toml::Table = toml::from_str(file).expect("the file is TOML");
    let set = table
        .iter()
        .map(|(key, value)| (key.clone(), normalise(value)))
        .collect();
    let unset = file
        .lines()
        .filter_map(|line| line.strip_prefix("# ")?.split_once(" = "))
        .map(|(key, _)| key.to_owned())
        .collect();
    Settings { set, unset }
}

/// Powers of two README writes sizes in.
fn binary_unit(unit: &str) -> Option<u64> {
    match unit {
        "KiB" => Some(1 << 10),
        "MiB" => Some(1 << 20),
        "GiB" => Some(1 << 30),
        _ => None,
    }
}

/// README's default for `key`, as the TOML value it shows in a code span,
/// normalised; `None` for `unset`.
///
/// A size may follow in parentheses, `` `1048576` (1 MiB) ``: it is
/// converted explicitly and must be the same amount. The unit of the value
/// is taken from the key: KiB for a key ending in `_kib`, bytes for one
/// ending in `_bytes`; a size after any other key is an error.
fn readme_default(key: &str, cell: &str) -> Option<String> {
    if cell == "unset" {
        return None;
    }
    let (literal, human) = match cell.split_once(" (") {
        Some((literal, human)) => {
            let human = human
                .strip_suffix(')')
                .unwrap_or_else(|| panic!("README default of {key}, {cell:?}: unclosed ("));
            (literal, Some(human))
        }
        None => (cell, None),
    };
    let literal = code_span(literal)
        .unwrap_or_else(|| panic!("README default of {key}, {cell:?}, is not a code span"));
    let value: toml::Table = toml::from_str(&format!("value = {literal}"))
        .unwrap_or_else(|err| panic!("README default of {key}, {literal:?}, is not TOML: {err}"));
    let value = &value["value"];
    if let Some(human) = human {
        let (amount, unit) = human
            .split_once(' ')
            .unwrap_or_else(|| panic!("README default of {key}: {human:?} is not `n unit`"));
        let amount: u64 = amount
            .parse()
            .unwrap_or_else(|_| panic!("README default of {key}: {amount:?} is not a number"));
        let unit = binary_unit(unit)
            .unwrap_or_else(|| panic!("README default of {key}: unknown unit {unit:?}"));
        let key_unit = if key.ends_with("_kib") {
            1 << 10
        } else if key.ends_with("_bytes") {
            1
        } else {
            panic!("README gives {key} a size, but its unit is unknown");
        };
        let exact = value
            .as_integer()
            .and_then(|number| u64::try_from(number).ok())
            .unwrap_or_else(|| panic!("README default of {key}: {literal} is not a size"));
        assert_eq!(
            exact * key_unit,
            amount * unit,
            "README default of {key}: {literal} is not {human}"
        );
    }
    Some(normalise(value))
}

/// The settings README's configuration table gives.
fn readme_table_settings() -> Settings {
    let section = section(README, "## Configuration");
    let rows = table_rows(section, "| key | default | meaning |");
    let mut settings = Settings {
        set: BTreeMap::new(),
        unset: BTreeSet::new(),
    };
    for cells in rows {
        let key = code_span(cells[0])
            .unwrap_or_else(|| panic!("README config row {cells:?}: the key is not a code span"));
        let fresh = match readme_default(key, cells[1]) {
            Some(value) => settings.set.insert(key.to_owned(), value).is_none(),
            None => settings.unset.insert(key.to_owned()),
        };
        assert!(fresh, "README's configuration table has {key} twice");
    }
    settings
}

/// The defaults of the code: `Config::defaults_toml()`, which is
/// `Config::default()` serialised, with `metrics_listen` (an `Option`,
/// `None` by default) as a comment.
fn code_settings() -> Settings {
    let settings = settings_of_toml(&Config::defaults_toml());
    assert!(Config::default().metrics_listen.is_none());
    assert!(settings.unset.contains("metrics_listen"), "{settings:?}");
    settings
}

#[test]
fn readme_configuration_table_has_exactly_the_keys_of_the_code() {
    let readme = readme_table_settings();
    let code = code_settings();
    let keys = |settings: &Settings| -> BTreeSet<String> {
        settings
            .set
            .keys()
            .chain(&settings.unset)
            .cloned()
            .collect()
    };
    let (readme_keys, code_keys) = (keys(&readme), keys(&code));
    assert_eq!(
        readme_keys.difference(&code_keys).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "README documents keys that Config does not have"
    );
    assert_eq!(
        code_keys.difference(&readme_keys).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "Config has keys that README does not document"
    );
}

#[test]
fn readme_configuration_table_gives_every_default_of_the_code() {
    let readme = readme_table_settings();
    let code = code_settings();
    for (key, value) in &code.set {
        if let Some(documented) = readme.set.get(key) {
            assert_eq!(documented, value, "README's default of {key}");
        } else if readme.unset.contains(key) {
            panic!("README says {key} is unset, but its default is {value}");
        }
    }
    for key in &code.unset {
        if let Some(documented) = readme.set.get(key) {
            panic!("README gives {key} the default {documented}, but it is unset");
        }
    }
}

/// README's example file says it "sets every key to its default" and that
/// `parlor --help` (which prints `Config::defaults_toml()`) prints the same
/// list: the same keys and values, and the same commented-out keys.
#[test]
fn readme_example_configuration_file_is_the_defaults_of_the_code() {
    let section = section(README, "## Configuration");
    let (_, example) = section
        .split_once("```toml\n")
        .expect("README's configuration has no TOML example");
    let (example, _) = example.split_once("```").expect("the example never ends");
    let (example, code) = (settings_of_toml(example), code_settings());
    let keys: BTreeSet<&String> = example.set.keys().chain(code.set.keys()).collect();
    let differing: Vec<_> = keys
        .into_iter()
        .map(|key| (key, example.set.get(key), code.set.get(key)))
        .filter(|(_, example, code)| example != code)
        .collect();
    assert!(
        differing.is_empty(),
        "(key, README example, code) where they differ: {differing:#?}"
    );
    assert_eq!(
        example.unset, code.unset,
        "keys commented out, unset by default"
    );
}
