/**
 * The question an RTMP server puts to its caller before it accepts a publish, and the answer: the
 * server conversation stops at "publish requested" and policy (the control plane, static keys)
 * decides.
 *
 * @module
 */

/** What the authorisation hook is asked. */
export interface PublishRequest {
  key: string;
  app: string;
  remoteAddress: string;
  sessionId: number;
}

/**
 * `forward`: whether the stream goes to its destinations (carried to the hub with the publisher).
 * `unanswered`: refused because no answer came (the control plane down, slow, or failing with
 * 5xx), not because the key was judged: a stream waiting for its publisher waits on.
 */
export type PublishDecision =
  | { allowed: true; forward?: boolean }
  | { allowed: false; reason: string; unanswered?: boolean };

/** Decides whether a key may publish. Must settle within its own timeout. */
export type PublishAuthorizer = (request: PublishRequest) => Promise<PublishDecision>;
