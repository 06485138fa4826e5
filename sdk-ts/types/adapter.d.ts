/// <reference path="./interfaces/switchboard-adapter-cache.d.ts" />
/// <reference path="./interfaces/switchboard-adapter-http.d.ts" />
/// <reference path="./interfaces/switchboard-adapter-log.d.ts" />
/// <reference path="./interfaces/switchboard-adapter-secrets.d.ts" />
/// <reference path="./interfaces/switchboard-adapter-types.d.ts" />
declare module 'switchboard:adapter/adapter@0.1.0' {
  export type Delivery = import('switchboard:adapter/types@0.1.0').Delivery;
  export type Outcome = import('switchboard:adapter/types@0.1.0').Outcome;
  export type PluginInfo = import('switchboard:adapter/types@0.1.0').PluginInfo;
  export type * as SwitchboardAdapterCache010 from 'switchboard:adapter/cache@0.1.0'; // import switchboard:adapter/cache@0.1.0
  export type * as SwitchboardAdapterHttp010 from 'switchboard:adapter/http@0.1.0'; // import switchboard:adapter/http@0.1.0
  export type * as SwitchboardAdapterLog010 from 'switchboard:adapter/log@0.1.0'; // import switchboard:adapter/log@0.1.0
  export type * as SwitchboardAdapterSecrets010 from 'switchboard:adapter/secrets@0.1.0'; // import switchboard:adapter/secrets@0.1.0
  export type * as SwitchboardAdapterTypes010 from 'switchboard:adapter/types@0.1.0'; // import switchboard:adapter/types@0.1.0
  /**
  * Name, version, channel, batch size and wanted hosts. Must not call imports.
  */
  export function describe(): PluginInfo;
  /**
  * Called on every fresh instance before `deliver`, with the operator's config for the plugin
  * (`[plugins.NAME.config]`, as key and value strings). An error fails the call, and the
  * host retries its deliveries as a plugin fault; the message is logged.
  */
  export function init(config: Array<[string, string]>): void;
  /**
  * Delivers a batch; returns exactly one outcome per delivery, in order. Extra outcomes are
  * dropped, and a delivery left without one is retried. A trap or a deadline passed fails
  * the whole call as a plugin fault: every delivery of the batch is retried, and
  * dead-lettered as `plugin-fault` once its attempts run out. Outcome strings are cut to a
  * bounded length before they reach headers and logs.
  */
  export function deliver(batch: Array<Delivery>): Array<Outcome>;
  export type Result<T, E> = { tag: 'ok', val: T } | { tag: 'err', val: E };
}
