import type {
  EnrollRequest,
  EnrollResponse,
  InventoryReport,
  MachinePolicy,
  StatusMessageIn,
} from '../client/agent-api.js';
import { ReimageError } from '../errors.js';
import type { ClientConfig } from './config.js';
import type { AgentConnection } from './daemon.js';
import {
  type AcceptedPublications,
  dropFolderOf,
  dropFolderSender,
  readServerlessPolicy,
  type ServerlessMachine,
} from './serverless.js';

/**
 * The daemon's connection in serverless mode (docs/serverless.md, docs/agent.md): the policy
 * is read from the published location (each advertisement's signature checked with the
 * configured public key), status goes to the drop folder as files. There is no enrollment
 * (the GUID is made on the machine) and no inventory route: the inventory is not sent — the
 * timeline's 1001 message carries its summary (OS, version, free space, client, image).
 */
export class ServerlessConnection implements AgentConnection {
  private readonly send;

  constructor(
    private readonly cfg: NonNullable<ClientConfig['serverless']>,
    /** The machine as targeting sees it, read at each poll (the applied image changes). */
    private readonly machine: () => ServerlessMachine,
    private readonly opts: {
      /** Each published file left out (bad signature, malformed); never deployed. */
      onRejected: (e: ReimageError) => void;
      now?: () => Date;
      /** What the machine accepted before (an older copy put back is a replay). */
      accepted?: AcceptedPublications;
    },
  ) {
    const m = machine();
    this.send = dropFolderSender(dropFolderOf(cfg), m.guid, { machineName: m.name });
  }

  enroll(_body: EnrollRequest): Promise<EnrollResponse> {
    return Promise.reject(
      new ReimageError('INVALID_ARGUMENT', 'a serverless machine does not enroll'),
    );
  }

  /** No-op: a drop file holds status messages only (the importer reads nothing else). */
  async reportInventory(_body: InventoryReport): Promise<void> {}

  policy(): Promise<MachinePolicy> {
    return readServerlessPolicy(this.cfg, this.machine(), this.opts.now, {
      onRejected: this.opts.onRejected,
      ...(this.opts.accepted ? { accepted: this.opts.accepted } : {}),
    });
  }

  async sendStatus(_machineId: string, messages: StatusMessageIn[]): Promise<void> {
    await this.send(messages);
  }

  close(): void {}
}
