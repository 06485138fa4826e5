declare module 'switchboard:adapter/log@0.1.0' {
  /**
   * Writes one line at `level`.
   */
  export function log(level: Level, message: string): void;
  /**
   * How much a line matters; the host's own log filter decides what is written.
   * # Variants
   * 
   * ## `"trace"`
   * 
   * ## `"debug"`
   * 
   * ## `"info"`
   * 
   * ## `"warn"`
   * 
   * ## `"error"`
   */
  export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
}
