//! Golden bytes of every round message, request and response: nodes and coordinators of
//! different versions must agree on them, and a change to the encoding must be deliberate.

use protocol::round::message::{Request, Response};

fn requests() -> Vec<Request> {
    vec![
        Request::Witness {
            from: 3,
            entries: vec![vec![1, 2, 3], vec![4]],
            note: b"note".to_vec(),
        },
        Request::Act {
            note: b"cosigned".to_vec(),
        },
        Request::Offer {
            entry: vec![5; 4],
            length: 70_000,
        },
        Request::Chunk {
            ciphertext: [8; 32],
            index: 1,
            bytes: vec![9; 5],
        },
        Request::Append { entry: vec![10; 3] },
        Request::Fetch {
            ciphertext: [11; 32],
            index: 2,
        },
        Request::Partial {
            request: 42,
            index: 0,
            count: 2,
            bytes: vec![12; 4],
        },
        Request::Incident { entry: vec![13; 2] },
        Request::Finished { last_round: 50 },
        Request::Resend { request: 77 },
    ]
}

fn responses() -> Vec<Response> {
    vec![
        Response::Ok,
        Response::Cosigned {
            size: 64,
            line: "— member-a abcd".into(),
        },
        Response::Behind { size: 12 },
        Response::Appended { leaf: 63 },
        Response::Data {
            length: 100,
            bytes: vec![15; 3],
        },
        Response::Refused {
            reason: "not a member".into(),
        },
    ]
}

fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(48)
        .map(|line| format!("  {}\n", hex::encode(line)))
        .collect()
}

#[test]
fn golden_round_messages() {
    let mut record = String::new();
    for (id, request) in requests().into_iter().enumerate() {
        let bytes = request.encode(id as u64 + 1);
        assert_eq!(
            Request::decode(&bytes).unwrap(),
            (id as u64 + 1, request.clone())
        );
        record.push_str(&format!(
            "request {}:\n{}",
            request.kind_name(),
            hex_lines(&bytes)
        ));
    }
    for (id, response) in responses().into_iter().enumerate() {
        let bytes = response.encode(id as u64 + 100);
        assert_eq!(
            Response::decode(&bytes).unwrap(),
            (id as u64 + 100, response.clone())
        );
        record.push_str(&format!("response {id}:\n{}", hex_lines(&bytes)));
    }
    insta::assert_snapshot!(record);
}

#[test]
fn every_round_message_starts_with_its_magic_and_version() {
    for request in requests() {
        assert_eq!(
            &request.encode(7)[..5],
            b"QRND\x02",
            "{}",
            request.kind_name()
        );
    }
    for response in responses() {
        assert_eq!(&response.encode(7)[..5], b"QRND\x02");
    }
}
