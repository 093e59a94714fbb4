import type { Catalog, Collection, Machine } from '../catalog/catalog.js';
import { compileRule } from '../catalog/collection-rule.js';
import type { MachineFacts } from '../catalog/collection-rule.js';
import { machineFacts } from './routes/machines.js';

/**
 * Which machines a collection holds: its static members and the machines its rule matches,
 * less its exclusions (exclusion wins). Evaluated on the server, over the current inventory.
 */
export class Membership {
  private constructor(
    private readonly machines: Machine[],
    private readonly facts: Map<string, MachineFacts>,
  ) {}

  static async load(catalog: Catalog, now: number): Promise<Membership> {
    const machines = await catalog.listMachines();
    const names = new Map((await catalog.listImages()).map((i) => [i.id, i.name]));
    return new Membership(
      machines,
      new Map(machines.map((m) => [m.id, machineFacts(m, names, now) as MachineFacts])),
    );
  }

  members(c: Pick<Collection, 'rule' | 'include' | 'exclude'>): Machine[] {
    const matches = c.rule ? compileRule(c.rule) : () => false;
    const include = new Set(c.include);
    const exclude = new Set(c.exclude);
    return this.machines.filter(
      (m) => !exclude.has(m.id) && (include.has(m.id) || matches(this.facts.get(m.id)!)),
    );
  }

  has(c: Pick<Collection, 'rule' | 'include' | 'exclude'>, machineId: string): boolean {
    return this.members(c).some((m) => m.id === machineId);
  }
}
