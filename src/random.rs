//! Randomness for secrets: SCRAM salts' server secret and nonces, cancel keys, idempotency lock
//! holders, the sandbox's HMAC key. Always the operating system's CSPRNG (through `getrandom`),
//! and failing closed: when the OS cannot give random bytes the caller gets an error and refuses
//! the login, the request or the start, never a predictable value such as zeros.

/// The OS random number generator did not answer.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(getrandom::Error);

/// `N` random bytes.
pub fn bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(RandomError)?;
    Ok(out)
}

/// `n` random bytes.
pub fn vec(n: usize) -> Result<Vec<u8>, RandomError> {
    let mut out = vec![0u8; n];
    getrandom::fill(&mut out).map_err(RandomError)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_filled_and_differ() {
        // 32 zero bytes or two equal draws happen with probability 2^-256: a failure here means
        // the bytes do not come from a random source.
        let (a, b) = (bytes::<32>().unwrap(), bytes::<32>().unwrap());
        assert_ne!(a, [0u8; 32]);
        assert_ne!(a, b);
        let v = vec(64).unwrap();
        assert_eq!(v.len(), 64);
        assert_ne!(v, vec![0u8; 64]);
    }
}
