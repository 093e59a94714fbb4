import type { SecretBox } from './secret-box.js';

/**
 * The key a machine encrypts its state store with for one advertisement: derived from the
 * server key, so it is stored nowhere, reaches the machine in its own policy, and an admin can
 * read it back to rescue a store by hand.
 */
export function stateStoreKey(
  deps: { secrets: SecretBox },
  machineId: string,
  advertisementId: string,
): string {
  return deps.secrets.derive(`state-store:${machineId}:${advertisementId}`).toString('base64');
}
