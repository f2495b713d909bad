//! The pure half of the importer: CSV bytes in, Consumer specs and precise errors out. Reads a
//! stream record by record (the `csv` crate: RFC 4180 quoting, LF or CRLF, a UTF-8 byte-order
//! mark ignored), checks the header once, turns each data row into a [`ConsumerSpec`] validated
//! with [`validate_spec`] (the CRD's own rules), and finds external ids that repeat within the
//! file. Knows nothing about the API server.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    io::{self, Read},
};

use csv::ByteRecord;
use serde::Serialize;

use crate::api::{
    Consumer, ConsumerSpec, ConsumerState,
    consumer::{CredentialsSpec, FieldError, ID_PATTERN, validate_spec},
};

/// The UTF-8 encoding of U+FEFF, which spreadsheet programs put at the start of a CSV export.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

const EXTERNAL_ID: &str = "external_id";
const NAME: &str = "name";
const EMAIL: &str = "email";
const COMPANY: &str = "company";
const DESCRIPTION: &str = "description";
const STATE: &str = "state";
const METADATA_PREFIX: &str = "metadata.";
/// Every column the header may name, as the file-level errors list them.
pub const KNOWN_COLUMNS: &str =
    "external_id, name, email, company, description, state, metadata.<key>";
const STATES: [ConsumerState; 3] = [
    ConsumerState::Active,
    ConsumerState::Suspended,
    ConsumerState::Blocked,
];

/// An error that makes the whole file unusable: nothing from it is applied.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read the file: {0}")]
    Read(#[from] io::Error),
    #[error("the file is empty: expected a header row naming the columns ({KNOWN_COLUMNS})")]
    Empty,
    #[error("line {line}: the header row is not valid UTF-8")]
    HeaderNotUtf8 { line: u64 },
    #[error("line {line}: {}", join(problems))]
    Header {
        line: u64,
        problems: Vec<HeaderProblem>,
    },
}

impl FileError {
    /// The line the error belongs to, when it belongs to one.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::HeaderNotUtf8 { line } | Self::Header { line, .. } => Some(*line),
            Self::Read(_) | Self::Empty => None,
        }
    }
}

/// What is wrong with the header row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// A required column is absent.
    Missing(&'static str),
    /// A column the importer does not know; it is refused rather than silently dropped.
    Unknown(String),
    /// The same column twice: which one would win is not obvious, so neither does.
    Duplicate(String),
    /// An empty header cell (1-based column number), often a trailing comma.
    Unnamed(usize),
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(column) => write!(f, "required column {column:?} is missing"),
            Self::Unknown(column) => {
                write!(
                    f,
                    "unknown column {column:?} (known columns: {KNOWN_COLUMNS})"
                )
            }
            Self::Duplicate(column) => write!(f, "column {column:?} appears more than once"),
            Self::Unnamed(position) => write!(f, "column {position} has no name"),
        }
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A row that cannot be applied, or a problem that belongs to no row, as the summary reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RowError {
    /// Line in the file where the row starts, the header being line 1. `None` only for a problem
    /// that belongs to no line (a file that cannot be read).
    pub line: Option<u64>,
    /// The row's `external_id` cell, when it has a non-empty one.
    pub external_id: Option<String>,
    /// Every rule the row breaks, each naming its column, separated by `; `.
    pub error: String,
}

/// A data row that passed every check: what the importer applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Line in the file where the row starts, the header being line 1.
    pub line: u64,
    pub spec: ConsumerSpec,
    /// Whether the row states the consumer's state. When it does not, the manifest leaves
    /// `state` out: a new Consumer gets the API server's default, and a state someone else set
    /// (`kubectl edit`) is left alone.
    pub state_given: bool,
}

impl Row {
    /// The Consumer's object name: its external id.
    pub fn object_name(&self) -> &str {
        &self.spec.external_id
    }

    /// The Consumer as the importer applies it (and `-o yaml` prints it): apiVersion, kind, name,
    /// namespace and the spec fields the file states. `credentials` is left out so that a
    /// re-import never takes back a rotation (`credentials.revision` raised by someone else).
    pub fn manifest(&self, namespace: &str) -> serde_yaml::Value {
        use kube::Resource;
        use serde_yaml::{Mapping, Value};

        let mut spec = match serde_yaml::to_value(&self.spec) {
            Ok(Value::Mapping(spec)) => spec,
            other => unreachable!("a ConsumerSpec serialises to a mapping, got {other:?}"),
        };
        spec.remove("credentials");
        if !self.state_given {
            spec.remove("state");
        }

        let mut metadata = Mapping::new();
        metadata.insert("name".into(), self.object_name().into());
        metadata.insert("namespace".into(), namespace.into());
        let mut manifest = Mapping::new();
        manifest.insert(
            "apiVersion".into(),
            Consumer::api_version(&()).as_ref().into(),
        );
        manifest.insert("kind".into(), Consumer::kind(&()).as_ref().into());
        manifest.insert("metadata".into(), Value::Mapping(metadata));
        manifest.insert("spec".into(), Value::Mapping(spec));
        Value::Mapping(manifest)
    }
}

/// One data row, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Valid(Row),
    Invalid(RowError),
}

impl Parsed {
    pub fn line(&self) -> u64 {
        match self {
            Self::Valid(row) => row.line,
            Self::Invalid(error) => error.line.unwrap_or_default(),
        }
    }
}

/// Where each known column sits in a row, from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    count: usize,
    external_id: usize,
    name: usize,
    email: usize,
    company: Option<usize>,
    description: Option<usize>,
    state: Option<usize>,
    /// `(key, position)` of each `metadata.<key>` column.
    metadata: Vec<(String, usize)>,
}

impl Columns {
    /// Reads a header row. Column names are matched without regard to case (`External_ID` is
    /// `external_id`); a metadata key keeps the case it is written in. Reports every problem of
    /// the header at once.
    pub fn from_header<S: AsRef<str>>(header: &[S]) -> Result<Self, Vec<HeaderProblem>> {
        let mut problems = Vec::new();
        let mut fixed: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut metadata: Vec<(String, usize)> = Vec::new();

        for (position, cell) in header.iter().enumerate() {
            let cell = cell.as_ref();
            let lower = cell.to_ascii_lowercase();
            let known = [EXTERNAL_ID, NAME, EMAIL, COMPANY, DESCRIPTION, STATE]
                .into_iter()
                .find(|column| *column == lower);

            if cell.is_empty() {
                problems.push(HeaderProblem::Unnamed(position + 1));
            } else if let Some(column) = known {
                if fixed.insert(column, position).is_some() {
                    problems.push(HeaderProblem::Duplicate(cell.to_owned()));
                }
            } else if lower.starts_with(METADATA_PREFIX) && cell.len() > METADATA_PREFIX.len() {
                let key = cell[METADATA_PREFIX.len()..].to_owned();
                if metadata.iter().any(|(seen, _)| *seen == key) {
                    problems.push(HeaderProblem::Duplicate(cell.to_owned()));
                } else {
                    metadata.push((key, position));
                }
            } else {
                problems.push(HeaderProblem::Unknown(cell.to_owned()));
            }
        }
        for required in [EXTERNAL_ID, NAME, EMAIL] {
            if !fixed.contains_key(required) {
                problems.push(HeaderProblem::Missing(required));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        Ok(Self {
            count: header.len(),
            external_id: fixed[EXTERNAL_ID],
            name: fixed[NAME],
            email: fixed[EMAIL],
            company: fixed.get(COMPANY).copied(),
            description: fixed.get(DESCRIPTION).copied(),
            state: fixed.get(STATE).copied(),
            metadata,
        })
    }

    /// Turns one data record into a valid row or an error naming each broken rule's column.
    pub fn parse(&self, line: u64, record: &ByteRecord, tenant: &str) -> Parsed {
        let external_id = record
            .get(self.external_id)
            .and_then(|cell| std::str::from_utf8(cell).ok())
            .filter(|cell| !cell.is_empty())
            .map(str::to_owned);
        let invalid = |error: String| {
            Parsed::Invalid(RowError {
                line: Some(line),
                external_id: external_id.clone(),
                error,
            })
        };
        if record.len() != self.count {
            let error = format!(
                "the row has {} fields, the header has {}",
                record.len(),
                self.count
            );
            return invalid(error);
        }

        let mut errors = Vec::new();
        let mut text = |position: usize, column: &str| -> String {
            match std::str::from_utf8(&record[position]) {
                Ok(cell) => cell.to_owned(),
                Err(_) => {
                    errors.push(format!("{column}: is not valid UTF-8"));
                    String::new()
                }
            }
        };
        let optional = |cell: String| Some(cell).filter(|cell| !cell.is_empty());

        let mut spec = ConsumerSpec {
            external_id: text(self.external_id, EXTERNAL_ID),
            tenant_id: tenant.to_owned(),
            name: text(self.name, NAME),
            email: text(self.email, EMAIL),
            company: self.company.and_then(|at| optional(text(at, COMPANY))),
            description: self
                .description
                .and_then(|at| optional(text(at, DESCRIPTION))),
            state: ConsumerState::default(),
            consumer_metadata: BTreeMap::new(),
            credentials: CredentialsSpec::default(),
        };
        let state = self.state.map(|at| text(at, STATE)).unwrap_or_default();
        for (key, position) in &self.metadata {
            let value = text(*position, &format!("{METADATA_PREFIX}{key}"));
            if !value.is_empty() {
                spec.consumer_metadata.insert(key.clone(), value);
            }
        }

        let state_given = !state.is_empty();
        match parse_state(&state) {
            Ok(state) => spec.state = state,
            Err(message) => errors.push(message),
        }
        errors.extend(validate_spec(&spec).iter().map(in_csv_terms));

        if errors.is_empty() {
            Parsed::Valid(Row {
                line,
                spec,
                state_given,
            })
        } else {
            invalid(errors.join("; "))
        }
    }
}

/// `active`, `suspended` or `blocked` in any case; an empty cell is the default state.
fn parse_state(cell: &str) -> Result<ConsumerState, String> {
    if cell.is_empty() {
        return Ok(ConsumerState::default());
    }
    STATES
        .into_iter()
        .find(|state| state.as_str().eq_ignore_ascii_case(cell))
        .ok_or_else(|| {
            format!("{STATE}: {cell:?} is not one of active, suspended, blocked (in any case)")
        })
}

/// Restates a CRD rule's error with the CSV column instead of the spec field.
fn in_csv_terms(error: &FieldError) -> String {
    let column = match error.field.as_str() {
        "spec.externalId" => EXTERNAL_ID,
        "spec.tenantId" => "--tenant",
        "spec.name" => NAME,
        "spec.email" => EMAIL,
        "spec.company" => COMPANY,
        "spec.description" => DESCRIPTION,
        "spec.consumerMetadata" => "metadata.*",
        other => other,
    };
    format!("{column}: {}", error.message)
}

/// Checks `--tenant` once, with the rule the CRD applies to `tenantId`, so that a bad tenant is
/// one clear error rather than the same error on every row.
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    static ID: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let id = ID.get_or_init(|| regex::Regex::new(ID_PATTERN).expect("valid pattern"));
    if id.is_match(tenant) {
        Ok(())
    } else {
        Err(format!(
            "--tenant: {tenant:?} must be 1 to 63 lower-case letters, digits, '.' or '-', \
             starting and ending with a letter or digit"
        ))
    }
}

/// The data rows of a CSV stream, read one record at a time: memory does not depend on the
/// length of the stream.
pub struct Rows<R: Read> {
    reader: csv::Reader<LineCounter<io::Chain<io::Cursor<Vec<u8>>, R>>>,
    columns: Columns,
    tenant: String,
    record: ByteRecord,
}

impl<R: Read> Rows<R> {
    /// Reads and checks the header row. A byte-order mark before it is dropped.
    pub fn open(input: R, tenant: &str) -> Result<Self, FileError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(LineCounter::new(without_byte_order_mark(input)?));

        let mut header = ByteRecord::new();
        if !reader
            .read_byte_record(&mut header)
            .map_err(into_file_error)?
        {
            return Err(FileError::Empty);
        }
        let line = reader.get_mut().line_from(0);
        let cells: Vec<&str> = header
            .iter()
            .map(std::str::from_utf8)
            .collect::<Result<_, _>>()
            .map_err(|_| FileError::HeaderNotUtf8 { line })?;
        let columns = Columns::from_header(&cells)
            .map_err(|problems| FileError::Header { line, problems })?;

        Ok(Self {
            reader,
            columns,
            tenant: tenant.to_owned(),
            record: ByteRecord::new(),
        })
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = Result<Parsed, FileError>;

    fn next(&mut self) -> Option<Self::Item> {
        let offset = self.reader.position().byte();
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => None,
            Ok(true) => {
                let line = self.reader.get_mut().line_from(offset);
                Some(Ok(self.columns.parse(line, &self.record, &self.tenant)))
            }
            Err(error) => Some(Err(into_file_error(error))),
        }
    }
}

/// The input as the csv reader sees it, keeping the bytes handed over that the reader may not be
/// done with, to find the line a record starts on. (The csv crate's position of a record is where
/// the previous one ended, before the blank lines and the `\n` of a CRLF it skips.)
struct LineCounter<R> {
    inner: R,
    /// The bytes handed over from offset `start` on.
    window: VecDeque<u8>,
    start: u64,
    /// Newlines before `start`.
    newlines: u64,
}

impl<R> LineCounter<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            window: VecDeque::new(),
            start: 0,
            newlines: 0,
        }
    }

    /// The line of the first byte from `offset` on that is not a line end: where the record the
    /// csv reader began at `offset` starts. Forgets the bytes before `offset`.
    fn line_from(&mut self, offset: u64) -> u64 {
        let forget = offset
            .saturating_sub(self.start)
            .min(self.window.len() as u64);
        let forgotten = self.window.drain(..forget as usize);
        self.newlines += forgotten.filter(|byte| *byte == b'\n').count() as u64;
        self.start += forget;

        let line_ends = self
            .window
            .iter()
            .take_while(|byte| matches!(byte, b'\r' | b'\n'));
        self.newlines + line_ends.filter(|byte| **byte == b'\n').count() as u64 + 1
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.window.extend(&buf[..read]);
        Ok(read)
    }
}

/// With flexible records and byte records, the only error the csv crate can return is I/O.
fn into_file_error(error: csv::Error) -> FileError {
    match error.into_kind() {
        csv::ErrorKind::Io(error) => FileError::Read(error),
        other => FileError::Read(io::Error::other(format!("{other:?}"))),
    }
}

/// The stream without a leading UTF-8 byte-order mark. Reads until it has three bytes (or the
/// end), since a short read must not let a mark through.
fn without_byte_order_mark<R: Read>(mut input: R) -> io::Result<io::Chain<io::Cursor<Vec<u8>>, R>> {
    let mut start = Vec::with_capacity(BYTE_ORDER_MARK.len());
    while start.len() < BYTE_ORDER_MARK.len() {
        let mut byte = [0u8; 1];
        match input.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => start.push(byte[0]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    if start == BYTE_ORDER_MARK {
        start.clear();
    }
    Ok(io::Cursor::new(start).chain(input))
}

/// The outcome of the validation pass over a whole file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Data rows in the file.
    pub total: u64,
    /// Rows that can be applied.
    pub valid: u64,
    /// One entry per row that cannot, in file order.
    pub errors: Vec<RowError>,
}

/// The first pass: reads the whole stream and checks every row, including external ids that
/// repeat (the later row is the one reported). Keeps the external ids seen, not the rows.
pub fn check<R: Read>(input: R, tenant: &str) -> Result<Checked, FileError> {
    check_with_progress(input, tenant, |_| {})
}

/// [`check`], calling `progress` with the number of rows read after each row.
pub fn check_with_progress<R: Read>(
    input: R,
    tenant: &str,
    mut progress: impl FnMut(u64),
) -> Result<Checked, FileError> {
    let mut checked = Checked::default();
    let mut first_line: HashMap<String, u64> = HashMap::new();

    for parsed in Rows::open(input, tenant)? {
        let parsed = parsed?;
        checked.total += 1;
        progress(checked.total);

        let line = parsed.line();
        let (external_id, mut error) = match parsed {
            Parsed::Valid(row) => (Some(row.spec.external_id), None),
            Parsed::Invalid(error) => (error.external_id, Some(error.error)),
        };
        if let Some(id) = &external_id {
            if let Some(first) = first_line.get(id) {
                let duplicate = format!("{EXTERNAL_ID}: {id:?} is already used on line {first}");
                error = Some(match error {
                    Some(other) => format!("{other}; {duplicate}"),
                    None => duplicate,
                });
            } else {
                first_line.insert(id.clone(), line);
            }
        }

        match error {
            None => checked.valid += 1,
            Some(error) => checked.errors.push(RowError {
                line: Some(line),
                external_id,
                error,
            }),
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "external_id,name,email\n";

    fn rows(csv: &str) -> Vec<Parsed> {
        Rows::open(csv.as_bytes(), "acme")
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn valid(parsed: &Parsed) -> &Row {
        match parsed {
            Parsed::Valid(row) => row,
            Parsed::Invalid(error) => panic!("expected a valid row, got {error:?}"),
        }
    }

    fn error_of(csv: &str) -> RowError {
        match rows(csv).pop() {
            Some(Parsed::Invalid(error)) => error,
            other => panic!("expected an invalid last row, got {other:?}"),
        }
    }

    fn header_problems(csv: &str) -> Vec<HeaderProblem> {
        match Rows::open(csv.as_bytes(), "acme") {
            Err(FileError::Header { line: 1, problems }) => problems,
            Err(other) => panic!("expected a header error, got {other}"),
            Ok(_) => panic!("expected a header error, the header was accepted"),
        }
    }

    #[test]
    fn a_plain_row_becomes_a_spec_in_the_tenant() {
        let csv = format!("{HEADER}partner-1,Partner One,ops@partner.example\n");

        let parsed = rows(&csv);

        let row = valid(&parsed[0]);
        assert_eq!(row.line, 2);
        assert_eq!(row.object_name(), "partner-1");
        assert_eq!(row.spec.tenant_id, "acme");
        assert_eq!(row.spec.name, "Partner One");
        assert_eq!(row.spec.email, "ops@partner.example");
        assert_eq!(
            (row.spec.company.as_deref(), row.spec.description.as_deref()),
            (None, None)
        );
        assert!(!row.state_given);
    }

    #[test]
    fn a_byte_order_mark_before_the_header_is_ignored() {
        let csv = format!("\u{feff}{HEADER}partner-1,Partner One,ops@partner.example\n");

        let parsed = rows(&csv);

        assert_eq!(valid(&parsed[0]).object_name(), "partner-1");
    }

    #[test]
    fn a_byte_order_mark_split_across_reads_is_still_ignored() {
        let csv = format!("\u{feff}{HEADER}partner-1,Partner One,ops@partner.example\n");
        let one_byte_at_a_time = OneByteReader(csv.as_bytes());

        let checked = check(one_byte_at_a_time, "acme").unwrap();

        assert_eq!((checked.total, checked.valid), (1, 1));
    }

    struct OneByteReader<'a>(&'a [u8]);

    impl Read for OneByteReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buf[0] = *first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn crlf_line_ends_are_read_like_lf() {
        let csv = "external_id,name,email\r\na,A,a@x.example\r\nb,B,b@x.example\r\n";

        let parsed = rows(csv);

        assert_eq!(valid(&parsed[0]).spec.email, "a@x.example");
        assert_eq!(valid(&parsed[1]).line, 3);
        assert_eq!(valid(&parsed[1]).spec.email, "b@x.example");
    }

    #[test]
    fn quoted_fields_keep_commas_quotes_and_non_ascii_text() {
        let csv = format!(
            "{HEADER}partner-1,\"Müller, \"\"Söhne\"\" & Co — 東京\",ops@partner.example\n"
        );

        let parsed = rows(&csv);

        assert_eq!(valid(&parsed[0]).spec.name, "Müller, \"Söhne\" & Co — 東京");
    }

    #[test]
    fn a_quoted_multi_line_field_keeps_its_newlines_and_later_lines_stay_right() {
        let csv = "external_id,name,email,description\n\
                   a,A,a@x.example,\"first line\nsecond line\nthird line\"\n\
                   B,B,b@x.example,\n";

        let parsed = rows(csv);

        let first = valid(&parsed[0]);
        assert_eq!(first.line, 2);
        assert_eq!(
            first.spec.description.as_deref(),
            Some("first line\nsecond line\nthird line")
        );
        assert_eq!(parsed[1].line(), 5);
    }

    #[test]
    fn columns_may_come_in_any_order_and_any_case() {
        let csv = "EMAIL,Name,State,External_ID\nops@x.example,X,SUSPENDED,x\n";

        let parsed = rows(csv);

        let row = valid(&parsed[0]);
        assert_eq!(
            (row.object_name(), row.spec.email.as_str()),
            ("x", "ops@x.example")
        );
        assert_eq!(row.spec.state, ConsumerState::Suspended);
    }

    #[test]
    fn state_is_read_in_any_case_and_defaults_to_active_when_empty() {
        let csv = "external_id,name,email,state\n\
                   a,A,a@x.example,active\n\
                   b,B,b@x.example,Suspended\n\
                   c,C,c@x.example,bLoCkEd\n\
                   d,D,d@x.example,\n";

        let parsed = rows(csv);

        let states: Vec<_> = parsed
            .iter()
            .map(|p| (valid(p).spec.state, valid(p).state_given))
            .collect();
        assert_eq!(
            states,
            [
                (ConsumerState::Active, true),
                (ConsumerState::Suspended, true),
                (ConsumerState::Blocked, true),
                (ConsumerState::Active, false),
            ]
        );
    }

    #[test]
    fn metadata_columns_fill_consumer_metadata_and_skip_empty_cells() {
        let csv = "external_id,name,email,metadata.Region,metadata.tier\n\
                   a,A,a@x.example,eu-west,gold\n\
                   b,B,b@x.example,,silver\n";

        let parsed = rows(csv);

        let first: Vec<_> = valid(&parsed[0])
            .spec
            .consumer_metadata
            .clone()
            .into_iter()
            .collect();
        assert_eq!(
            first,
            [
                ("Region".into(), "eu-west".into()),
                ("tier".into(), "gold".into())
            ]
        );
        let second: Vec<_> = valid(&parsed[1])
            .spec
            .consumer_metadata
            .clone()
            .into_iter()
            .collect();
        assert_eq!(second, [("tier".to_owned(), "silver".to_owned())]);
    }

    #[test]
    fn cells_are_trimmed_and_empty_optional_cells_are_absent() {
        let csv = "external_id,name,email,company\n  a , A ,  a@x.example ,  \n";

        let parsed = rows(csv);

        let row = valid(&parsed[0]);
        assert_eq!((row.object_name(), row.spec.name.as_str()), ("a", "A"));
        assert_eq!(row.spec.company, None);
    }

    #[test]
    fn an_unknown_column_is_a_file_error_that_names_it() {
        let problems = header_problems("external_id,name,email,phone\n");

        assert_eq!(problems, [HeaderProblem::Unknown("phone".into())]);
    }

    #[test]
    fn every_missing_required_column_is_named() {
        let problems = header_problems("name,company\n");

        assert_eq!(
            problems,
            [
                HeaderProblem::Missing("external_id"),
                HeaderProblem::Missing("email")
            ]
        );
    }

    #[test]
    fn repeated_unnamed_and_keyless_metadata_columns_are_file_errors() {
        let problems =
            header_problems("external_id,name,email,Email,metadata.,,metadata.a,metadata.a\n");

        assert_eq!(
            problems,
            [
                HeaderProblem::Duplicate("Email".into()),
                HeaderProblem::Unknown("metadata.".into()),
                HeaderProblem::Unnamed(6),
                HeaderProblem::Duplicate("metadata.a".into()),
            ]
        );
    }

    #[test]
    fn an_empty_file_and_a_binary_header_are_file_errors() {
        assert!(matches!(
            Rows::open(&b""[..], "acme"),
            Err(FileError::Empty)
        ));
        assert!(matches!(
            Rows::open(&b"\xff\xfe,name\n"[..], "acme"),
            Err(FileError::HeaderNotUtf8 { line: 1 })
        ));
    }

    #[test]
    fn a_bad_email_is_reported_with_its_column_and_rule() {
        let error = error_of(&format!("{HEADER}partner-1,Partner One,x\n"));

        assert_eq!(
            error,
            RowError {
                line: Some(2),
                external_id: Some("partner-1".into()),
                error: "email: \"x\" is not an email address".into(),
            }
        );
    }

    #[test]
    fn a_missing_name_is_reported_with_its_column_and_rule() {
        let error = error_of(&format!("{HEADER}partner-1,,ops@x.example\n"));

        assert_eq!(error.error, "name: must be 1 to 255 characters, got 0");
    }

    #[test]
    fn an_invalid_external_id_is_reported_with_the_object_name_rule() {
        let error = error_of(&format!("{HEADER}Partner_1,P,ops@x.example\n"));

        assert_eq!(error.external_id.as_deref(), Some("Partner_1"));
        assert!(
            error
                .error
                .starts_with("external_id: \"Partner_1\" must be 1 to 63 lower-case")
        );
    }

    #[test]
    fn an_unknown_state_is_reported_with_the_allowed_values() {
        let error = error_of("external_id,name,email,state\na,A,a@x.example,paused\n");

        assert_eq!(
            error.error,
            "state: \"paused\" is not one of active, suspended, blocked (in any case)"
        );
    }

    #[test]
    fn too_long_company_and_description_and_too_many_metadata_entries_are_reported() {
        let keys: Vec<String> = (0..65).map(|i| format!("metadata.k{i}")).collect();
        let header = format!(
            "external_id,name,email,company,description,{}\n",
            keys.join(",")
        );
        let values = vec!["v"; 65].join(",");
        let row = format!(
            "a,A,a@x.example,{},{},{values}\n",
            "c".repeat(256),
            "d".repeat(4097)
        );

        let error = error_of(&format!("{header}{row}"));

        assert_eq!(
            error.error,
            "company: must be at most 255 characters; \
             description: must be at most 4096 characters; \
             metadata.*: must have at most 64 entries"
        );
    }

    #[test]
    fn a_row_with_every_rule_broken_lists_every_rule() {
        let error = error_of("external_id,name,email,state\n-bad-,,nope,maybe\n");

        let columns: Vec<_> = error
            .error
            .split("; ")
            .map(|part| part.split(':').next().unwrap())
            .collect();
        assert_eq!(columns, ["state", "external_id", "name", "email"]);
    }

    #[test]
    fn a_row_with_the_wrong_number_of_fields_is_reported() {
        let error = error_of(&format!("{HEADER}a,A\n"));

        assert_eq!(error.error, "the row has 2 fields, the header has 3");
        assert_eq!(error.external_id.as_deref(), Some("a"));
    }

    #[test]
    fn a_cell_that_is_not_utf8_is_reported_with_its_column() {
        let csv = b"external_id,name,email\na,\xff\xfe,a@x.example\n";

        let error = match Rows::open(&csv[..], "acme").unwrap().next() {
            Some(Ok(Parsed::Invalid(error))) => error,
            other => panic!("expected an invalid row, got {other:?}"),
        };

        assert!(
            error.error.starts_with("name: is not valid UTF-8"),
            "{}",
            error.error
        );
    }

    #[test]
    fn a_repeated_external_id_is_reported_on_the_later_line() {
        let csv = format!("{HEADER}a,A,a@x.example\nb,B,b@x.example\na,Again,again@x.example\n");

        let checked = check(csv.as_bytes(), "acme").unwrap();

        assert_eq!((checked.total, checked.valid), (3, 2));
        assert_eq!(
            checked.errors,
            [RowError {
                line: Some(4),
                external_id: Some("a".into()),
                error: "external_id: \"a\" is already used on line 2".into(),
            }]
        );
    }

    #[test]
    fn a_repeat_of_an_invalid_row_is_still_a_duplicate() {
        let csv = format!("{HEADER}a,A,bad\na,A,a@x.example\n");

        let checked = check(csv.as_bytes(), "acme").unwrap();

        let lines: Vec<_> = checked.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(2), Some(3)]);
        assert_eq!(
            checked.errors[1].error,
            "external_id: \"a\" is already used on line 2"
        );
    }

    #[test]
    fn check_counts_every_row_and_reports_bad_ones_in_file_order() {
        let csv = format!("{HEADER}good-1,G,g@x.example\nbad,B,nope\ngood-2,G,g@x.example\n,,\n");

        let checked = check(csv.as_bytes(), "acme").unwrap();

        assert_eq!((checked.total, checked.valid), (4, 2));
        let lines: Vec<_> = checked.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(3), Some(5)]);
        assert_eq!(checked.errors[1].external_id, None);
    }

    #[test]
    fn blank_lines_are_skipped_but_counted_in_line_numbers() {
        let csv = format!("{HEADER}\na,A,a@x.example\n\n\nb,B,nope\n");

        let checked = check(csv.as_bytes(), "acme").unwrap();

        assert_eq!(checked.total, 2);
        assert_eq!(checked.errors[0].line, Some(6));
    }

    #[test]
    fn crlf_files_with_blank_lines_and_multi_line_fields_report_the_starting_line() {
        let csv = "\r\nexternal_id,name,email,description\r\n\
                   a,A,a@x.example,\"one\r\ntwo\"\r\n\
                   \r\n\
                   b,B,nope,\r\n";

        let checked = check(csv.as_bytes(), "acme").unwrap();

        assert_eq!(checked.errors[0].line, Some(6));
        let parsed = rows(csv);
        assert_eq!(valid(&parsed[0]).line, 3);
        assert_eq!(
            valid(&parsed[0]).spec.description.as_deref(),
            Some("one\r\ntwo")
        );
    }

    #[test]
    fn line_numbers_stay_right_far_beyond_the_read_buffer() {
        let mut csv = String::from(HEADER);
        let mut bad_lines = Vec::new();
        let mut line = 2;
        for i in 0..3000 {
            if i % 7 == 0 {
                csv.push_str(&format!("r{i},\"Multi\nline\n{i}\",r{i}@x.example\n"));
                line += 3;
            } else if i % 11 == 0 {
                csv.push_str(&format!("r{i},Bad,not-an-email\n\n"));
                bad_lines.push(Some(line));
                line += 2;
            } else {
                csv.push_str(&format!("r{i},Name {i},r{i}@x.example\r\n"));
                line += 1;
            }
        }

        let checked = check(csv.as_bytes(), "acme").unwrap();

        let lines: Vec<_> = checked.errors.iter().map(|error| error.line).collect();
        assert_eq!(lines, bad_lines);
    }

    #[test]
    fn a_header_only_file_has_no_rows_and_no_errors() {
        let checked = check(HEADER.as_bytes(), "acme").unwrap();

        assert_eq!(checked, Checked::default());
    }

    #[test]
    fn a_tenant_must_follow_the_id_rule() {
        assert_eq!(check_tenant("acme"), Ok(()));

        let error = check_tenant("ACME").unwrap_err();

        assert!(error.starts_with("--tenant: \"ACME\" must be"), "{error}");
    }

    #[test]
    fn the_manifest_states_only_what_the_file_states() {
        let csv = "external_id,name,email,state,metadata.tier\n\
                   a,A,a@x.example,,gold\n\
                   b,B,b@x.example,blocked,\n";
        let parsed = rows(csv);

        let without_state = serde_yaml::to_string(&valid(&parsed[0]).manifest("team-a")).unwrap();
        let with_state = serde_yaml::to_string(&valid(&parsed[1]).manifest("team-a")).unwrap();

        assert_eq!(
            without_state,
            "apiVersion: gostoa.dev/v1alpha1\nkind: Consumer\n\
             metadata:\n  name: a\n  namespace: team-a\n\
             spec:\n  externalId: a\n  tenantId: acme\n  name: A\n  email: a@x.example\n  \
             consumerMetadata:\n    tier: gold\n"
        );
        assert!(with_state.contains("  state: Blocked\n"), "{with_state}");
        assert!(!with_state.contains("credentials"), "{with_state}");
    }

    #[test]
    fn a_manifest_reads_back_as_the_same_consumer_spec() {
        let csv = "external_id,name,email,company,description,state,metadata.k\n\
                   a,\"Ünïcødé, Ltd\",a@x.example,Co,\"two\nlines\",suspended,v\n";
        let row = valid(&rows(csv)[0]).clone();

        let yaml = serde_yaml::to_string(&row.manifest("ns")).unwrap();
        let consumer: Consumer = serde_yaml::from_str(&yaml).unwrap();

        assert_eq!(consumer.spec, row.spec);
        assert_eq!(consumer.metadata.name.as_deref(), Some("a"));
        assert_eq!(consumer.metadata.namespace.as_deref(), Some("ns"));
    }
}
