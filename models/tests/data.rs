//! Data loading, CSV errors, splits, data parts, shuffling and cursors.

use murmur_models::data::{
    BatchStream, CsvOptions, DataCursor, DataError, Source, digits, parse_csv, peer_part_index,
    shakespeare, text_corpus,
};
use murmur_models::{DataShape, WireActivation};

fn csv_error(text: &str) -> (usize, String) {
    match parse_csv(text, &CsvOptions::default()) {
        Err(DataError::Csv { line, message }) => (line, message),
        other => panic!("expected a CSV error, got {other:?}"),
    }
}

#[test]
fn digits_split_and_scaling() {
    let data = digits().unwrap();
    assert_eq!((data.train.len(), data.test.len()), (1437, 360));
    assert_eq!(
        data.train.shape(),
        DataShape::Classes {
            n_features: 64,
            n_classes: 10
        }
    );
    let Source::Classes {
        features, labels, ..
    } = data.train.source()
    else {
        panic!()
    };
    assert!(features.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(features.contains(&1.0));
    assert!(labels.iter().all(|l| *l < 10));
    let batch = data.test.batch(&[0, 1, 2]);
    assert_eq!(batch.targets.len(), 3);
    assert!(matches!(
        batch.input,
        WireActivation::Hidden {
            shape: [3, 1, 64],
            ..
        }
    ));
}

#[test]
fn shakespeare_vocab_and_held_out_tail() {
    let data = shakespeare(64).unwrap();
    let (
        Source::Text {
            tokens: train,
            vocab,
            ..
        },
        Source::Text { tokens: test, .. },
    ) = (data.train.source(), data.test.source())
    else {
        panic!()
    };
    assert_eq!(vocab.len(), 66);
    let total = train.len() + test.len();
    assert_eq!(test.len(), total / 10);
    assert!(vocab.decode(&train[..9]).starts_with("Bernardo:"));
    let batch = data.train.batch(&[0]);
    let WireActivation::Tokens { ids, .. } = &batch.input else {
        panic!()
    };
    assert_eq!(&batch.targets[..63], &ids[1..]);
}

#[test]
fn csv_parses_with_header_and_label_column() {
    let text = "a,b,label\n1,2,0\n3,4,1\n\n5,6,2\n7,8,1\n9,10,0\n";
    let opts = CsvOptions {
        has_header: true,
        ..CsvOptions::default()
    };
    let data = parse_csv(text, &opts).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (4, 1));
    assert_eq!(
        data.train.shape(),
        DataShape::Classes {
            n_features: 2,
            n_classes: 3
        }
    );
    let first_col = CsvOptions {
        label_column: Some(0),
        ..CsvOptions::default()
    };
    let data = parse_csv("0,1.5,2\n1,2.5,3\n", &first_col).unwrap();
    assert_eq!(
        data.train.shape(),
        DataShape::Classes {
            n_features: 2,
            n_classes: 2
        }
    );
}

#[test]
fn csv_errors_name_the_line() {
    assert_eq!(csv_error("1,2,0\n1,2\n").0, 2);
    let (line, msg) = csv_error("1,2,0\n\n1,x,1\n");
    assert_eq!(line, 3);
    assert!(msg.contains("\"x\""), "{msg}");
    let (line, msg) = csv_error("1,2,0\n1,2,-1\n");
    assert_eq!(line, 2);
    assert!(msg.contains("label"), "{msg}");
    assert_eq!(csv_error("1,2,0.5\n").0, 1);
    assert_eq!(csv_error("1,inf,0\n").0, 1);
    assert_eq!(csv_error("1,2,99999\n").0, 1);
    assert_eq!(csv_error("5\n").0, 1);
    assert!(matches!(
        parse_csv("1,2,0\n", &CsvOptions::default()),
        Err(DataError::TooSmall(_))
    ));
    assert!(matches!(
        parse_csv("", &CsvOptions::default()),
        Err(DataError::TooSmall(_))
    ));
}

#[test]
fn text_corpus_rejects_tiny_text_and_accepts_unicode() {
    assert!(matches!(
        text_corpus("short", 64),
        Err(DataError::TooSmall(_))
    ));
    let text = "héllo wörld → ".repeat(40);
    let data = text_corpus(&text, 8).unwrap();
    assert!(matches!(
        data.train.shape(),
        DataShape::Text { context: 8, .. }
    ));
    assert!(!data.test.is_empty());
}

#[test]
fn parts_partition_the_data() {
    let data = digits().unwrap().train;
    let parts: Vec<_> = (0..3).map(|i| data.part(i, 3).unwrap()).collect();
    assert_eq!(parts.iter().map(|s| s.len()).sum::<usize>(), data.len());
    let mut seen: Vec<u32> = Vec::new();
    for s in &parts {
        let all: Vec<usize> = (0..s.len()).collect();
        seen.extend(s.batch(&all).targets);
    }
    assert_eq!(seen.len(), data.len());
    assert!(data.part(3, 3).is_err());
    assert!(data.part(0, 0).is_err());
    assert_eq!(
        peer_part_index("12D3KooWpeer", 7),
        peer_part_index("12D3KooWpeer", 7)
    );
    assert!(peer_part_index("12D3KooWpeer", 7) < 7);
    let spread: std::collections::HashSet<_> = (0..50)
        .map(|i| peer_part_index(&format!("peer-{i}"), 4))
        .collect();
    assert_eq!(spread.len(), 4);
    assert_eq!(
        data.part_for_peer("p", 4).unwrap().len(),
        data.part(peer_part_index("p", 4), 4).unwrap().len()
    );
}

#[test]
fn shuffling_is_seeded_and_cursors_resume() {
    let mut a = BatchStream::new(100, 42);
    let mut b = BatchStream::new(100, 42);
    let mut c = BatchStream::new(100, 43);
    let first = a.next_batch(30);
    assert_eq!(first, b.next_batch(30));
    assert_ne!(first, c.next_batch(30));
    assert_ne!(first, (0..30).collect::<Vec<_>>());
    for _ in 0..5 {
        a.next_batch(30);
    }
    let cursor = a.cursor();
    assert_eq!(cursor.epoch, 1);
    let mut resumed = BatchStream::resume(100, 42, cursor);
    for _ in 0..10 {
        assert_eq!(a.next_batch(30), resumed.next_batch(30));
    }
    // Every epoch visits each sample once (the 10-sample tail is skipped, not repeated).
    let mut epoch = BatchStream::resume(100, 1, DataCursor::default());
    let mut all: Vec<usize> = (0..3).flat_map(|_| epoch.next_batch(30)).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 90);
    assert_eq!(BatchStream::new(5, 0).next_batch(30).len(), 5);
}
