// One linter for the project. Import boundaries between rooms are lint rules
// (see docs/adr/0001-rooms.md): data flows one way, src/content imports nothing of ours.
import tseslint from 'typescript-eslint';

const room = (dir, forbidden) => ({
  files: [`src/${dir}/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      {
        patterns: forbidden.map((r) => ({
          group: [`**/${r}/*`, `**/${r}`],
          message: `src/${dir} may not import src/${r} (see ARCHITECTURE rooms).`,
        })),
      },
    ],
  },
});

export default tseslint.config(
  { ignores: ['dist/', 'build/', 'node_modules/', 'lab-data/', 'bench/**/*.js'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_' },
      ],
      '@typescript-eslint/consistent-type-imports': 'error',
    },
  },
  room('content', [
    'image',
    'catalog',
    'server',
    'agent',
    'migrate',
    'lab',
    'cli',
    'package',
    'client',
  ]),
  room('image', ['catalog', 'server', 'agent', 'migrate', 'lab', 'cli', 'package', 'client']),
  room('catalog', [
    'content',
    'image',
    'server',
    'agent',
    'migrate',
    'lab',
    'cli',
    'package',
    'client',
  ]),
  room('status', [
    'content',
    'image',
    'catalog',
    'server',
    'agent',
    'migrate',
    'lab',
    'cli',
    'package',
    'client',
  ]),
  room('client', [
    'content',
    'image',
    'catalog',
    'server',
    'agent',
    'migrate',
    'lab',
    'cli',
    'package',
  ]),
  room('package', ['content', 'image', 'catalog', 'server', 'agent', 'lab', 'cli', 'client']),
  room('migrate', ['image', 'catalog', 'server', 'agent', 'lab', 'cli', 'package', 'client']),
  room('server', ['agent', 'migrate', 'lab', 'cli', 'client']),
  room('agent', ['catalog', 'server', 'lab', 'cli', 'package']),
);
