//! The codec of every accrual.v1 service (wired by `codec_path` in build.rs): tonic's
//! `ProstCodec`, except that bytes that do not decode as the expected message are the caller's
//! error, INVALID_ARGUMENT, where tonic says INTERNAL ("failed to decode Protobuf message").
//! A client that receives a reply it cannot decode gets INVALID_ARGUMENT as well.

use std::marker::PhantomData;

use tonic::codec::{Codec, DecodeBuf, Decoder, ProstCodec};
use tonic::Status;

/// `ProstCodec<T, U>` with decode errors as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct WireCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        WireCodec { inner: ProstCodec::default() }
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = WireDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder { _message: PhantomData }
    }
}

/// Decodes `U` as prost does; a message that does not decode is INVALID_ARGUMENT.
#[derive(Debug)]
pub struct WireDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: prost::Message + Default> Decoder for WireDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "the message is not a valid {}: {e}",
                message_name::<U>()
            ))
        })
    }
}

/// `accrual.v1.UsageEvent` for `proto::v1::UsageEvent`.
fn message_name<U>() -> String {
    let rust = std::any::type_name::<U>();
    format!("accrual.v1.{}", rust.rsplit("::").next().unwrap_or(rust))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_named_as_in_the_proto() {
        assert_eq!(message_name::<crate::v1::UsageEvent>(), "accrual.v1.UsageEvent");
    }
}
