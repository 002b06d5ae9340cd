//! Fake credentials of every kind the default policy detects, generated from a seed: the corpus
//! of the detection tests, the detect-secrets comparison and the scan benchmark. Nothing here is
//! a real secret (random characters in the real formats); generating them keeps the repository
//! free of secret-shaped literals that other scanners would flag.

/// One planted credential: the kind (the rule expected to find it), the line it sits on, and
/// the secret bytes that must never survive redaction.
#[derive(Debug, Clone)]
pub struct Planted {
    pub rule: &'static str,
    pub line: String,
    pub secret: String,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: small, seeded, the same everywhere.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URLSAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const HEX: &[u8] = b"0123456789abcdef";

/// A card number with a valid Luhn digit (Visa-style prefix 4).
fn card(r: &mut Rng) -> String {
    let mut d: Vec<u32> = vec![4];
    d.extend((0..14).map(|_| (r.next() % 10) as u32));
    // Check digit over the 15 digits so far.
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 0 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    d.push((10 - sum % 10) % 10);
    let s: String = d
        .iter()
        .map(|x| char::from_digit(*x, 10).unwrap_or('0'))
        .collect();
    format!("{} {} {} {}", &s[0..4], &s[4..8], &s[8..12], &s[12..16])
}

/// `n` credentials of each kind (different for each seed), one per line.
pub fn credentials(seed: u64, n: usize) -> Vec<Planted> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = Vec::new();
    for _ in 0..n {
        let aws_id = format!("AKIA{}", r.pick(UPPER_DIGITS, 16));
        let aws_secret = r.pick(B64, 40);
        let gh = format!("ghp_{}", r.pick(ALNUM, 36));
        let gl = format!("glpat-{}", r.pick(URLSAFE, 20));
        let slack = format!(
            "xoxb-{}-{}-{}",
            r.pick(b"0123456789", 12),
            r.pick(b"0123456789", 13),
            r.pick(ALNUM, 24)
        );
        let stripe = format!("sk_live_{}", r.pick(ALNUM, 24));
        let google = format!("AIza{}", r.pick(URLSAFE, 35));
        let openai = format!("sk-proj-{}T3BlbkFJ{}", r.pick(ALNUM, 20), r.pick(ALNUM, 20));
        let jwt = format!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{}.{}",
            r.pick(URLSAFE, 30),
            r.pick(URLSAFE, 43)
        );
        let pem_body = r.pick(B64, 64);
        let password = r.pick(ALNUM, 14);
        let api_key = r.pick(HEX, 32);
        let entropy = r.pick(B64, 32);
        let url_pw = r.pick(ALNUM, 12);
        let email = format!("{}@example.org", r.pick(b"abcdefghijklmnop", 8));
        let cc = card(&mut r);
        let ssn = format!(
            "{:03}-{:02}-{:04}",
            100 + r.next() % 500,
            10 + r.next() % 89,
            1000 + r.next() % 8999
        );
        out.extend([
            Planted {
                rule: "secret.aws_access_key_id",
                line: format!("aws_access_key_id = \"{aws_id}\""),
                secret: aws_id,
            },
            Planted {
                rule: "secret.aws_secret_access_key",
                line: format!("aws_secret_access_key = \"{aws_secret}\""),
                secret: aws_secret,
            },
            Planted {
                rule: "secret.github_token",
                line: format!("GITHUB_TOKEN = \"{gh}\""),
                secret: gh,
            },
            Planted {
                rule: "secret.gitlab_token",
                line: format!("gitlab = \"{gl}\""),
                secret: gl,
            },
            Planted {
                rule: "secret.slack_token",
                line: format!("slack_client.connect(\"{slack}\")"),
                secret: slack,
            },
            Planted {
                rule: "secret.stripe_key",
                line: format!("stripe.api_key = \"{stripe}\""),
                secret: stripe,
            },
            Planted {
                rule: "secret.google_api_key",
                line: format!("maps(key=\"{google}\")"),
                secret: google,
            },
            Planted {
                rule: "secret.openai_key",
                line: format!("client = OpenAI(\"{openai}\")"),
                secret: openai,
            },
            Planted {
                rule: "secret.jwt",
                line: format!("headers = {{\"Authorization\": \"Bearer {jwt}\"}}"),
                secret: jwt,
            },
            Planted {
                rule: "secret.private_key",
                line: format!(
                    "-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\n-----END RSA PRIVATE KEY-----"
                ),
                secret: pem_body,
            },
            Planted {
                rule: "secret.password_assignment",
                line: format!("db_password = \"{password}\""),
                secret: password,
            },
            Planted {
                rule: "secret.api_key_assignment",
                line: format!("api_key = \"{api_key}\""),
                secret: api_key,
            },
            Planted {
                rule: "secret.high_entropy_assignment",
                line: format!("signing_secret = \"{entropy}\""),
                secret: entropy,
            },
            Planted {
                rule: "secret.url_credentials",
                line: format!("DATABASE_URL = \"postgres://admin:{url_pw}@db.internal:5432/app\""),
                secret: url_pw,
            },
            Planted {
                rule: "pii.email",
                line: format!("# contact {email} for access"),
                secret: email,
            },
            Planted {
                rule: "pii.credit_card",
                line: format!("card_number = \"{cc}\""),
                secret: cc,
            },
            Planted {
                rule: "pii.ssn",
                line: format!("ssn_field = \"{ssn}\""),
                secret: ssn,
            },
        ]);
    }
    out
}
