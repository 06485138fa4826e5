/**
 * A hostile TypeScript guest, for the sandbox tests (tests/integration/tests/sandbox.rs): the
 * same verbs as the Rust `misbehave` guest where JavaScript can misbehave the same way. The
 * delivery's recipient is the verb, `verb:arg`:
 *
 * - `ok`: delivered `ok-KEY`.
 * - `loop`: spins forever.
 * - `grow:MB`: allocates MB mebibytes in 1 MiB arrays and keeps them.
 * - `http:URL`: one GET; delivered with the status, or rejected with the error.
 * - `count`: delivered with how many deliveries this instance has seen, module state included;
 *   a fresh instance per call always answers 1.
 * - `throw`: throws from `deliver`.
 */
import {
  RequestBuilder,
  defineAdapter,
  delivered,
  pluginInfo,
  rejected,
  send,
  type Delivery,
  type Outcome,
} from "../../sdk-ts/src/index.ts";

/** Survives between calls only if an instance were reused. */
let seen = 0;
const kept: Uint8Array[] = [];

function spin(): never {
  let n = 0;
  for (;;) n = (n + 1) | 0;
}

function act(delivery: Delivery): Outcome {
  seen += 1;
  const [verb, ...rest] = delivery.recipient.split(":");
  const arg = rest.join(":");
  switch (verb) {
    case "ok":
      return delivered(`ok-${delivery.key}`);
    case "loop":
      return spin();
    case "grow": {
      for (let i = 0; i < Number(arg); i++) {
        const block = new Uint8Array(1 << 20);
        block.fill(i & 0xff);
        kept.push(block);
      }
      return delivered(`grew ${kept.length} MiB`);
    }
    case "http": {
      const sent = send(RequestBuilder.get(arg).build());
      return sent.ok
        ? delivered(String(sent.response.status))
        : rejected("http", JSON.stringify(sent.error));
    }
    case "count":
      return delivered(String(seen));
    case "throw":
      throw new Error("thrown by the test guest");
    default:
      return rejected("verb", `unknown verb ${verb}`);
  }
}

export const { describe, init, deliver } = defineAdapter({
  describe: () => pluginInfo("hostile-ts", "0.1.0", "test", { maxBatch: 100 }),
  init: () => null,
  deliver: (_state, batch) => batch.map(act),
});
