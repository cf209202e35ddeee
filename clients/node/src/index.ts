/** @tensorwasm/client: the TensorWasm gateway from TypeScript. */
export * from "./client.js";
export * from "./errors.js";
export * from "./retries.js";
export * from "./values.js";
export * as gateway from "./gen/tensorwasm/gateway/v1/gateway_service_pb.js";
export * as invocation from "./gen/tensorwasm/common/v1/invocation_pb.js";
export * as values from "./gen/tensorwasm/common/v1/values_pb.js";
export * as reasons from "./gen/tensorwasm/common/v1/errors_pb.js";
export * as rpc from "./gen/google/rpc/error_details_pb.js";
