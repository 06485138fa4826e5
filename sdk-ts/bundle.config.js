// Merged into `jco componentize`'s Rolldown bundle (`--bundle-config`): the host's interfaces
// are imports of the component, not modules to bundle.
export default {
  external: [/^switchboard:/],
};
