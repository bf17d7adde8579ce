//! GetEvents with a codec that hands each message over undecoded, so that the throughput
//! client costs as little CPU as possible on a machine it shares with the daemon: datagram
//! events are recognized by their first byte (the oneof's tag, which prost writes first) and
//! counted; anything else (lost_events) is decoded.

use bytes::{Buf as _, Bytes};
use prost::Message as _;
use sidewall_proto::v1::{GetEventsRequest, GetEventsResponse};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
};

/// Field 7 (process_datagram) of GetEventsResponse, length-delimited: (7 << 3) | 2.
pub const DATAGRAM_TAG: u8 = 0x3a;

pub struct RawCodec;
pub struct RequestEncoder;
pub struct RawDecoder;

impl Encoder for RequestEncoder {
    type Item = GetEventsRequest;
    type Error = Status;

    fn encode(&mut self, item: GetEventsRequest, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

impl Codec for RawCodec {
    type Encode = GetEventsRequest;
    type Decode = Bytes;
    type Encoder = RequestEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

pub async fn get_events(channel: Channel, req: GetEventsRequest) -> anyhow::Result<Streaming<Bytes>> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    grpc.ready().await.map_err(|e| anyhow::anyhow!("GetEvents: service not ready: {e}"))?;
    let path = PathAndQuery::from_static("/sidewall.v1.Sensors/GetEvents");
    Ok(grpc.server_streaming(tonic::Request::new(req), path, RawCodec).await?.into_inner())
}

pub fn decode(b: &[u8]) -> Option<GetEventsResponse> {
    GetEventsResponse::decode(b).ok()
}
