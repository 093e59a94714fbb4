import type {
  EnrollRequest,
  EnrollResponse,
  InventoryReport,
  MachinePolicy,
  StatusMessageIn,
} from './agent-api.js';
import { ApiClient } from './http.js';

/**
 * The calls a machine's agent makes to the management server, over {@link ApiClient} (so the
 * server's certificate is pinned when the client's configuration names a fingerprint). The
 * machine credential (`rim_…`) is the bearer token of every call but enrollment.
 */
export class AgentServerClient {
  readonly #api: ApiClient;

  constructor(o: {
    server: string;
    fingerprint?: string;
    credential?: string;
    timeoutMs?: number;
    userAgent?: string;
  }) {
    this.#api = new ApiClient({
      server: o.server,
      ...(o.fingerprint ? { fingerprint: o.fingerprint } : {}),
      ...(o.credential ? { token: o.credential } : {}),
      timeoutMs: o.timeoutMs ?? 30_000,
      userAgent: o.userAgent ?? 'reimage-agent',
    });
  }

  /** Exchanges an enrollment token for the machine's GUID and credential. */
  enroll(body: EnrollRequest, signal?: AbortSignal): Promise<EnrollResponse> {
    return this.#api.request<EnrollResponse>('POST', '/api/v1/client/enroll', { body, signal });
  }

  async reportInventory(body: InventoryReport, signal?: AbortSignal): Promise<void> {
    await this.#api.request('PUT', '/api/v1/client/inventory', { body, signal });
  }

  policy(signal?: AbortSignal): Promise<MachinePolicy> {
    return this.#api.request<MachinePolicy>('GET', '/api/v1/client/policy', { signal });
  }

  /** Posts a batch of status messages (idempotent by machine and seq on the server). */
  sendStatus(
    machineId: string,
    messages: StatusMessageIn[],
    signal?: AbortSignal,
  ): Promise<{ accepted: number; duplicates: number }> {
    return this.#api.request('POST', '/api/v1/client/status', {
      body: { machineId, messages },
      signal,
    });
  }

  close(): void {
    this.#api.close();
  }
}
